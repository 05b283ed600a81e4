import subprocess
import sys
from pathlib import Path

import pytest

from quillman.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_check_config_accepts_every_shipped_config(capsys):
    paths = [str(ROOT / "serve_config.yaml"), *map(str, sorted((ROOT / "configs").glob("gpu-*.yaml")))]
    assert main(["check-config", *paths]) == 0
    assert capsys.readouterr().out.count(": ok") == len(paths)


def test_check_config_names_the_bad_setting(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "serve_config.yaml").read_text().replace("model: tiny.en", "model: tiny.en\n        no_such_knob: 1"))
    assert main(["check-config", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "no_such_knob" in out


def test_bench_help_comes_from_the_loadtest_package(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: quillman bench") and "--concurrency" in out and "--baseline" in out


def test_bench_without_its_extra_says_how_to_install(monkeypatch, capsys):
    import quillman_bench

    monkeypatch.setattr(quillman_bench, "missing_modules", lambda: ["psutil"])
    assert main(["bench", "--url", "ws://127.0.0.1:1/v1/realtime"]) == 2
    err = capsys.readouterr().err
    assert "psutil" in err and "install the bench extra: pip install -e '.[bench]'" in err


def test_the_runtime_cli_does_not_import_the_loadtest_tools():
    # talk / say / doctor / check-config work without the bench extra installed.
    code = ("import sys; from quillman.cli import main; from quillman import client, doctor; "
            "assert not any(m.startswith('quillman_bench') for m in sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_server_package_never_imports_the_tooling():
    """quillman/ is what the server runs; quillman_bench/ (bench, soak, load test, cluster
    simulation, server processes) may import it, never the other way round: only the CLI's
    ``bench`` command reaches for the tooling, inside the command."""
    importers = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "quillman").rglob("*.py")
                       if "quillman_bench" in path.read_text())
    assert importers == ["quillman/cli.py"], importers
