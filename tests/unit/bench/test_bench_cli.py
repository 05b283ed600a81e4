"""``quillman bench``'s command line and turn scheduling (quillman_bench.bench); no server."""

from __future__ import annotations

import argparse

import pytest

from quillman_bench import bench
from quillman.protocol import STAGES


def test_parse_concurrency():
    assert bench.parse_concurrency("1,2,4,8") == [1, 2, 4, 8]
    assert bench.parse_concurrency("3") == [3]
    for bad in ("0", "", "1,-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_concurrency(bad)


OPTIONS = ["--concurrency", "1,2", "--turns", "2", "--duration", "60", "--baseline", "--json", "o.json",
           "--markdown", "--plot", "o.png", "--start", "--port", "8011", "--warmup-turns", "0", "--slo-ms",
           "1000", "--rounds", "3", "--quiet"]


def test_cli_parses_every_option():
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *OPTIONS])
    assert args.concurrency == [1, 2] and args.baseline and args.start and args.port == 8011
    assert args.rounds == 3
    assert args.run is bench.run


def test_standalone_parser_matches_the_subcommand():
    args = bench.build_parser().parse_args(OPTIONS)
    assert args.concurrency == [1, 2] and args.slo_ms == 1000.0 and args.run is bench.run


def test_split_turns_over_rounds():
    assert bench.split_turns(10, 2) == [5, 5]
    assert bench.split_turns(10, 3) == [4, 3, 3]
    assert bench.split_turns(2, 5) == [1, 1]
    assert bench.split_turns(3, 1) == [3]


def test_stage_names_come_from_the_metrics_module():
    # One list of stage names: the bench has no copy of its own.
    assert not hasattr(bench, "STAGES")
    assert "first_audio_ms" in STAGES
