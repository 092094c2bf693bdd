"""A storage budget cuts the suite into waves: each wave's activations exist only until its SAEs are
evaluated; a later re-run of one of its units restores exactly the inputs it needs, bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks.schedule import Selector
from flows.suite import rerun_command
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.units import UnitSpec
from tests.helpers import changed, cli, end_times, sae_files, small_suite_dict, write_config



def test_a_waved_extract_unit_is_rerun_by_its_wave_and_shard():
    assert (rerun_command("s.yaml", "extract:wave_01/shard_00003")
            == "scopeflow rerun s.yaml --stage extract --wave 1 --shard 3")
    assert rerun_command("s.yaml", "extract:shard_00003") == "scopeflow rerun s.yaml --stage extract --shard 3"
    unit = UnitSpec(stage="extract", unit="wave_01/shard_00003", fingerprint="f", shard=3, wave=1)
    assert Selector(stage="extract", wave=1, shard=3).matches(unit) and Selector(stage="extract", wave=1).matches(unit)
    assert not Selector(stage="extract", wave=0, shard=3).matches(unit)


@pytest.mark.slow
def test_waves_free_activations_and_a_rerun_restores_only_what_it_needs(tmp_path, ray_session, embedded_assets):
    # one (site, layer) holds 2 x 96 x 127 rows x (64 x 2 + 8) bytes = 3.3 MB extracted + shuffled
    cfg = small_suite_dict(tmp_path, sites=["res"], layers=[0, 1])
    cfg["storage"]["budget_bytes"] = 4_000_000
    path = write_config(tmp_path / "suite.yaml", cfg)
    run = Path(cfg["storage"]["root"])

    plan = cli("plan", str(path))
    assert plan.returncode == 0, plan.stderr
    assert "│    1 │ res 0  │" in plan.stdout and "│    2 │ res 1  │" in plan.stdout

    first = cli("run", str(path))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ledger = Ledger(StorageRoot(str(run)))
    extract = ledger.records("extract")
    assert sorted(r.unit for r in extract) == ["wave_00/shard_00000", "wave_00/shard_00001",
                                               "wave_01/shard_00000", "wave_01/shard_00001"]
    assert all(r.freed_at for r in extract + ledger.records("shuffle"))
    assert not list(run.glob("activations/*/*/*")) and not list(run.glob("shuffled/*/*"))
    assert sorted(p.name for p in (run / "evals/res").iterdir()) == ["layer_0.parquet", "layer_1.parquet"]
    saes = sae_files(run)

    again = cli("run", str(path))
    assert again.returncode == 0 and "nothing to do" in again.stdout  # freed is not missing

    t0 = end_times(ledger.root)
    rerun = cli("rerun", str(path), "--stage", "train", "--site", "res", "--layer", "0")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = end_times(ledger.root)
    ran = changed(t0, after) - {"report:suite", "tokenize:corpus"}
    # wave 0's shards come back (its layer 0 is needed), wave 1's do not
    assert ran == {"extract:wave_00/shard_00000", "extract:wave_00/shard_00001", "shuffle:res/layer_0",
                   "train:res/layer_0", "evaluate:res/layer_0", "inspect:res/layer_0"}
    assert sae_files(run) == saes  # the restored inputs are the same bytes: the same SAEs
    assert not list(run.glob("activations/*/*/*"))  # and freed again

    # one extract shard of wave 1, as a corrupt-chunk error names it: its wave's other shard is restored for
    # the shuffle that reads both, and nothing of wave 0 runs
    t0 = end_times(ledger.root)
    shard = cli("rerun", str(path), "--stage", "extract", "--wave", "1", "--shard", "0")
    assert shard.returncode == 0, shard.stdout[-3000:] + shard.stderr[-3000:]
    ran = changed(t0, end_times(ledger.root)) - {"report:suite", "tokenize:corpus"}
    assert ran == {"extract:wave_01/shard_00000", "extract:wave_01/shard_00001", "shuffle:res/layer_1",
                   "train:res/layer_1", "evaluate:res/layer_1", "inspect:res/layer_1"}
    assert sae_files(run) == saes
