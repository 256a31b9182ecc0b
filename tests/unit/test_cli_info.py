import json

from mimo.cli.main import main


def test_info_flash(capsys):
    assert main(["info", "--preset", "flash"]) == 0
    out = capsys.readouterr().out
    assert "total (no MTP):                       308.779B" in out
    assert "active per token:                     15.446B" in out
    assert "no embedding/head:  14.196B" in out
    assert "per MTP block:                        0.329B" in out
    assert "23040 B per token of context (9 layers)" in out


def test_info_json_and_model_dir(tmp_path, capsys):
    from tests.helpers import random_model

    random_model().save_pretrained(tmp_path)
    assert main(["info", "--model", str(tmp_path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["parameters"]["per_mtp_block"] > 0


def test_info_errors(tmp_path, capsys):
    assert main(["info", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["info", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
