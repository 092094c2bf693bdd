"""`scopeflow plan`: the capacity arithmetic against what a run really writes, and the storage waves."""
from __future__ import annotations

import pytest

from flows.config import SuiteConfig, load_suite_config
from tasks.capacity import KNOWN_CONFIGS, ModelShape, capacity_plan, describe_groups, plan_waves
from tests.helpers import REPO, cli, small_suite_dict


def test_gemma_2_2b_holds_about_350_kb_of_activations_per_token():
    shape = ModelShape.from_hf_config(KNOWN_CONFIGS["google/gemma-2-2b"])
    per_token = shape.n_layers * sum(shape.site_width(s) * 2 for s in ("res", "att", "mlp"))
    assert per_token == 26 * (2304 + 2048 + 2304) * 2 == 346_112  # ~350 KB per token in bf16 (docs/architecture.md, "Scale")
    # 2.6B parameters, of which 0.59B embed: the forward FLOPs per token are ~2 x the layers' parameters
    assert 3.5e9 < shape.forward_flops_per_token(1024, logits=False) < 4.5e9


def test_waves_fit_the_budget_in_layer_order():
    cfg = SuiteConfig.model_validate({"storage": {"budget_bytes": 250}})
    groups = [(s, layer) for s in ("res", "att") for layer in range(3)]
    waves = plan_waves(cfg, groups, {g: 100 for g in groups})
    assert waves == [[("att", 0), ("res", 0)], [("att", 1), ("res", 1)], [("att", 2), ("res", 2)]]
    assert describe_groups([("res", 0), ("res", 1), ("res", 3), ("att", 2)]) == "res 0-1,3, att 2"
    assert plan_waves(SuiteConfig(), groups, {g: 100 for g in groups}) == [sorted(groups, key=lambda g: (g[1], g[0]))]
    with pytest.raises(ValueError, match="budget_bytes: 50 bytes cannot hold even one .*att layer 0 needs 100"):
        plan_waves(SuiteConfig.model_validate({"storage": {"budget_bytes": 50}}), groups, {g: 100 for g in groups})


def test_plan_bounds_what_the_tiny_suite_writes(tmp_path, embedded_assets):
    """The planned bytes are an upper bound within a few percent of a real extraction (the plan cannot know
    how many EOS tokens the corpus holds)."""
    from tasks.lm.model import load_config

    cfg = SuiteConfig.model_validate(small_suite_dict(tmp_path))
    shape = ModelShape.from_hf_config(load_config(cfg.model))
    plan = capacity_plan(cfg, shape, [0, 2], 96, None)
    extract = next(s for s in plan["stages"] if s["stage"] == "extract")
    assert extract["units"] == 2 and plan["site_layers"] == 6 and plan["saes"] == 24
    # rows: 96 sequences x 127 non-BOS positions; x is d=64 bf16 (128 B) plus an 8-byte index row
    assert extract["bytes"] == 6 * 96 * 127 * (64 * 2 + 8)


@pytest.mark.parametrize("config", ["tiny", "gemma-2-2b", "gemma-2-9b"])
def test_plan_prints_units_bytes_hours_and_waves(config, embedded_assets):
    # the CLI's own code in this process (tests.helpers.cli): `plan` starts no Ray and no Prefect
    out = cli("plan", str(REPO / f"configs/{config}.yaml"), env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    for word in ("extract", "shuffle", "train", "evaluate", "PFLOP", "cpu-hours", "storage waves", "peak activation"):
        assert word in out.stdout
    cfg = load_suite_config(REPO / f"configs/{config}.yaml")
    if config == "gemma-2-2b":
        assert "8,000,000,000 tokens" in out.stdout and "346.1 KB of activations per token" in out.stdout
    if config != "tiny":
        assert cfg.storage.budget_bytes and "│   10 │" in out.stdout  # cut into waves
    else:
        assert "one wave" in out.stdout
