"""quillman bench --transport: the option, the modes it runs, the talker's URL."""

from __future__ import annotations

import argparse

import pytest

from quillman_bench import bench
from quillman_bench.webrtc_talker import http_base


def test_transport_option():
    args = bench.build_parser().parse_args(["--transport", "webrtc,websocket", "--variants", "server_vad"])
    assert args.transport == ["webrtc", "websocket"]
    assert bench.build_parser().parse_args([]).transport == ["websocket"]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_transports("carrier-pigeon")


def test_http_base_of_the_realtime_url():
    assert http_base("ws://127.0.0.1:8000/v1/realtime") == "http://127.0.0.1:8000"
    assert http_base("wss://voice.example/pipeline") == "https://voice.example"
