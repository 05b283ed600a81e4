from pathlib import Path

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
