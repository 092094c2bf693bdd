"""Bad input: one clear line naming the file and field, a non-zero exit, and nothing written."""
from __future__ import annotations

import re

import pytest

from flows.cli import main
from tests.conftest import small_suite_dict, write_config

CASES = {
    "unknown_field": ({"sae.learning_rate": 0.1}, r"sae\.learning_rate: unknown field"),
    "missing_corpus": ({"corpus.paths": ["/nonexistent/corpus.jsonl"]}, r"no corpus file matches /nonexistent/corpus\.jsonl"),
    "missing_model": ({"model.name_or_path": "/nonexistent/model"}, r"model folder does not exist: /nonexistent/model"),
    "bad_site": ({"sites": ["res", "resid"]}, r"sites\.1: Input should be 'res', 'att' or 'mlp' \(got 'resid'\)"),
    "layer_out_of_range": ({"layers": [0, 7]}, r"layer 7 is out of range .*4 layers"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["run", "status"])
def test_bad_config_is_one_line_and_writes_nothing(case, command, tmp_path, capsys, embedded_assets):
    overrides, pattern = CASES[case]
    cfg = small_suite_dict(tmp_path, **overrides)
    path = write_config(tmp_path / "bad.yaml", cfg)
    code = main([command, str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(path) in err
    assert re.search(pattern, err), err
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_unknown_rerun_stage(tmp_path, capsys, embedded_assets):
    path = write_config(tmp_path / "c.yaml", small_suite_dict(tmp_path))
    assert main(["rerun", str(path), "--stage", "finetune"]) == 2
    assert "unknown stage 'finetune'" in capsys.readouterr().err
