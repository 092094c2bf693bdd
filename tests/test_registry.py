"""The two registries: stages (tasks/registry.py) and SAE architectures (sae/registry.py). Tests iterate
them, so a stage or an architecture added later is covered by registering it."""
from __future__ import annotations

import pytest
import torch

from flows.config import ConfigError, SuiteConfig, load_suite_config
from flows.units import PrefectRayExecutor
from sae import ARCHITECTURES, SweepPoint, TrainConfig, architecture_class, load_saelens, save_saelens, sweep_points
from sae.architectures import build_sae
from sae.export import load_gemma_scope_npz, save_gemma_scope_npz
from storage import layout
from tasks.registry import STAGE_NAMES, STAGES, get_stage, upstream
from tasks.stages.train import sae_dir
from tasks.units import suite_fingerprint
from tests.helpers import small_suite_dict, write_config

# ---------------------------------------------------------------- stages


def test_stage_table_is_consistent():
    first, *rest = STAGE_NAMES
    assert STAGES[first].plan is None and STAGES[first].reads == ()
    for i, name in enumerate(STAGE_NAMES):
        stage = STAGES[name]
        assert stage.name == name and callable(stage.run)
        assert name == first or callable(stage.plan)
        assert set(stage.reads) <= set(STAGE_NAMES[:i]), f"{name} reads a later stage"
        assert not stage.freed_by_wave or stage.per_wave
    # the report reads every stage: its latent browser shows what inspect found
    assert upstream("report") == STAGE_NAMES[:-1]
    assert upstream("inspect") == ("tokenize", "extract", "shuffle", "train")


def test_unknown_stage_is_named():
    with pytest.raises(ValueError, match="unknown stage 'trian' \\(one of tokenize, extract"):
        get_stage("trian")


@pytest.mark.parametrize("field", ["cpus_per_unit", "gpus_per_unit"])
def test_per_stage_orchestration_keys_are_checked(tmp_path, field):
    cfg = small_suite_dict(tmp_path)
    cfg["orchestration"] = {field: {"trian": 1}}
    path = write_config(tmp_path / "bad.yaml", cfg)
    with pytest.raises(ConfigError) as err:
        load_suite_config(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f"{field}: unknown stage 'trian'" in msg


def test_unit_resources_default_to_the_registry(tmp_path):
    cfg = SuiteConfig.model_validate({**small_suite_dict(tmp_path),
                                      "orchestration": {"cpus_per_unit": {"train": 2}, "gpus_per_unit": {"train": 1}}})
    assert cfg.unit_resources("train") == (2, 1)
    assert cfg.unit_resources("extract") == (STAGES["extract"].cpus, STAGES["extract"].gpus)


def test_train_workers_start_with_the_stage_environment(tmp_path):
    """The train stage's glibc settings reach its Ray workers as their runtime environment where a step's
    temporaries exceed glibc's mmap threshold; other stages' workers, and small sweeps', keep the run's own."""
    small = PrefectRayExecutor(SuiteConfig.model_validate(small_suite_dict(tmp_path)), None, "run")
    assert all("runtime_env" not in small.ray_options(s) for s in STAGE_NAMES)  # 4 x 256 x 128 bytes
    cfg = SuiteConfig.model_validate(small_suite_dict(tmp_path, **{"sae.widths": [65536]}))
    executor = PrefectRayExecutor(cfg, None, "run")
    train = executor.ray_options("train")
    assert train["runtime_env"] == {"env_vars": {"MALLOC_MMAP_THRESHOLD_": str(16 * 2**30),
                                                 "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}}
    assert train["num_cpus"] == cfg.unit_resources("train")[0]
    assert all("runtime_env" not in executor.ray_options(s) for s in STAGE_NAMES if s != "train")


def test_suite_fingerprint_ignores_orchestration(tmp_path):
    base = small_suite_dict(tmp_path)
    a = SuiteConfig.model_validate(base)
    b = SuiteConfig.model_validate({**base, "orchestration": {"task_retries": 5, "retry_delay_seconds": [1.0]}})
    c = SuiteConfig.model_validate({**base, "seed": 1})
    assert suite_fingerprint(a) == suite_fingerprint(b) != suite_fingerprint(c)


# ---------------------------------------------------------------- architectures

ALL = sorted(ARCHITECTURES)


def test_unknown_architecture_raises_everywhere():
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated'"):
        architecture_class("gated")
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated'"):
        TrainConfig(architectures=["jumprelu", "gated"])


@pytest.mark.parametrize("name", ALL)
def test_architecture_facts(name):
    cls = ARCHITECTURES[name]
    assert cls.architecture == name and cls.display_name and cls.saelens_architecture
    assert cls.sparsity_field in TrainConfig.model_fields
    cfg = TrainConfig(widths=[32], architectures=[name])
    (point,) = sweep_points(cfg)
    assert point.cls is cls and point.sparsity == getattr(cfg, cls.sparsity_field)[0]
    assert point.slug.startswith(cls.setting_prefix)
    assert sae_dir("res", 1, point) == layout.sae_dir("res", 1, 32, point.slug) == f"saes/res/layer_1/width_32/{point.slug}"


def test_folder_names_are_the_published_ones():
    assert SweepPoint("jumprelu", 256, 0.003).slug == "lambda_0.003"
    assert SweepPoint("topk", 256, 16).slug == "topk_16"
    assert SweepPoint("relu", 256, 0.3).slug == "relu_l1_0.3"


@pytest.mark.parametrize("name", ALL)
def test_every_architecture_trains_exports_and_loads(name, tmp_path):
    cls = ARCHITECTURES[name]
    cfg = TrainConfig(widths=[48], architectures=[name], topk_ks=[6], batch_size=64)
    (point,) = sweep_points(cfg)
    sae = build_sae(point, 12, cfg, torch.Generator().manual_seed(0))
    assert isinstance(sae, cls)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    losses, f = sae.training_loss(x, 0.01)
    losses["loss"].backward()
    assert sae.W_enc.grad is not None and f.shape == (64, 48)
    folded = sae.folded(2.0)
    save_saelens(folded, tmp_path / "sl", model_name="m", hook_name="blocks.0.hook_resid_post", context_size=8)
    loaded, cfg_json = load_saelens(tmp_path / "sl")
    assert type(loaded) is cls and cfg_json["architecture"] == cls.saelens_architecture
    raw = 2.0 * x
    torch.testing.assert_close(loaded(raw)[0], folded(raw)[0])
    if cls.gemma_scope_form:
        save_gemma_scope_npz(folded, tmp_path / "params.npz")
        npz = load_gemma_scope_npz(tmp_path / "params.npz")
        torch.testing.assert_close(npz(raw)[0], folded(raw)[0])
    else:
        with pytest.raises(ValueError, match="no such form"):
            save_gemma_scope_npz(folded, tmp_path / "params.npz")
        assert not (tmp_path / "params.npz").exists()
