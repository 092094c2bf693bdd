"""The real flow on a small suite: `scopeflow` as a user runs it, through a Prefect server and Ray."""
from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from flows.config import SuiteConfig
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.latent_tables import load_sae_latents
from tasks.lm.model import load_tokenizer
from tasks.registry import STAGE_NAMES
from tasks.reporting import sae_script
from tasks.stages.report import stored_script
from tests.browser import open_page
from tests.helpers import api_post, changed, cli, end_times, small_suite_dict, suite_task_runs, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_session, embedded_assets):
    tmp = tmp_path_factory.mktemp("suite")
    cfg_dict = small_suite_dict(tmp)
    path = write_config(tmp / "suite.yaml", cfg_dict)
    proc = cli("run", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, path, cfg_dict, proc


def test_first_run_writes_every_output_and_ledger_record(first_run):
    tmp, path, cfg_dict, proc = first_run
    cfg = SuiteConfig.model_validate(cfg_dict)
    root = StorageRoot(cfg.storage.root)
    run = Path(cfg.storage.root)
    assert "delta loss" in proc.stdout and "report:" in proc.stdout
    suite_json = json.loads((run / "suite.json").read_text())
    assert suite_json["resolved"]["layers"] == [0, 2] and suite_json["versions"]["prefect"] == "3.8.8"
    n_shards = 2
    expected = ["tokens/train/zarr.json", "tokens/eval/zarr.json", "report/index.html", "report/metrics.parquet",
                "report/delta_loss_by_layer.png", "report/l0_by_layer.png", "report/fvu_by_layer.png"]
    for site in cfg.sites:
        for layer in (0, 2):
            expected += [f"activations/{site}/layer_{layer}/shard_{s:05d}/x/zarr.json" for s in range(n_shards)]
            expected += [f"activations/{site}/layer_{layer}/shard_{s:05d}/index/zarr.json" for s in range(n_shards)]
            expected += [f"shuffled/{site}/layer_{layer}/x/zarr.json", f"evals/{site}/layer_{layer}.parquet"]
            for w in cfg.sae.widths:
                for lam in cfg.sae.lambdas:
                    d = f"saes/{site}/layer_{layer}/width_{w}/lambda_{lam:g}"
                    expected += [f"{d}/params.npz", f"{d}/cfg.json", f"{d}/sae_weights.safetensors",
                                 f"{d}/train_log.parquet"]
                    latents = f"latents/{site}/layer_{layer}/width_{w}/lambda_{lam:g}"
                    expected += [f"{latents}/stats.parquet", f"{latents}/contexts.parquet", f"{latents}/browser.js"]
    missing = [p for p in expected if not (run / p).exists()]
    assert not missing, missing
    ledger = Ledger(root)
    counts = {s: ledger.records(s) for s in STAGE_NAMES}
    assert {s: len(v) for s, v in counts.items()} == {"tokenize": 1, "extract": n_shards, "shuffle": 6, "train": 6,
                                                      "evaluate": 6, "inspect": 6, "report": 1}
    for recs in counts.values():
        for r in recs:
            assert r.status == "complete" and r.attempt == 1 and r.fingerprint and r.outputs
            assert r.ended_at >= r.started_at


def test_runs_reached_the_prefect_server(first_run, prefect_server):
    """The dashboard shows the suite, its units subflow, every unit as a task run `stage:unit` tagged with its
    stage, and a progress artifact per stage."""
    # the session's server holds every test's runs: this one's suite run is named after its config
    (suite,), units, task_runs = suite_task_runs(prefect_server, first_run[1])
    assert suite["state_type"] == "COMPLETED", suite
    assert [r["name"] for r in units] == ["units"] and units[0]["parent_task_run_id"], units
    assert units[0]["state_type"] == "COMPLETED", units
    by_name = {r["name"]: r for r in task_runs}
    assert {"extract:shard_00000", "extract:shard_00001", "train:res/layer_0", "evaluate:mlp/layer_2",
            "inspect:att/layer_0", "report:suite"} <= set(by_name)
    for name in ("extract:shard_00000", "train:res/layer_0", "report:suite"):
        assert name.split(":")[0] in by_name[name]["tags"], by_name[name]["tags"]
    artifacts = api_post(prefect_server, "/artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]},
                                                                             "flow_run_id": {"any_": [units[0]["id"]]}}})
    keys = {a["key"] for a in artifacts}
    assert {f"scopeflow-{stage}-progress" for stage in STAGE_NAMES} <= keys, keys
    assert any(a["data"] == 100.0 for a in artifacts if a["key"] == "scopeflow-train-progress"), artifacts


def _latent_page_text(dom: str) -> tuple[str, list[str]]:
    """The chosen latent's title and each context's visible tokens (the page's text, not its data)."""
    parser = _Contexts()
    parser.feed(dom)
    return parser.title, parser.contexts


class _Contexts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.title, self.contexts, self._in = "", [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id") == "latent-title":
            self._in = "title"
        elif a.get("class") == "context":
            self.contexts.append("")
            self._in = "context"
        elif a.get("class") == "act":
            self._in = "act"
        elif self._in == "act" and tag == "span":
            self._in = "context"

    def handle_endtag(self, tag):
        if (self._in == "title" and tag == "h2") or (self._in == "context" and tag == "div"):
            self._in = None
        elif self._in == "act" and tag == "span":
            self._in = "context"

    def handle_data(self, data):
        if self._in == "title":
            self.title += data
        elif self._in == "context":
            self.contexts[-1] += data


def _most_frequent_with_contexts(root: StorageRoot, cfg: SuiteConfig):
    w, lam = cfg.sae.widths[-1], cfg.sae.lambdas[0]
    s = load_sae_latents(root, "res", 0, w, f"lambda_{lam:g}")
    stats = sorted(s.stats.to_pylist(), key=lambda r: (-r["frequency"], r["latent"]))
    return s, next(r for r in stats if r["n_contexts"])


def test_the_latent_browser_shows_a_latents_contexts_as_the_parquet_files_have_them(first_run, tmp_path):
    """In headless Chromium, from the file system: the page loads with no console line, the latent picked by
    the link shows its contexts, whose visible tokens are the parquet windows decoded, best first."""
    _, _, cfg_dict, _ = first_run
    cfg = SuiteConfig.model_validate(cfg_dict)
    root = StorageRoot(cfg.storage.root)
    s, latent = _most_frequent_with_contexts(root, cfg)
    page = Path(cfg.storage.root) / "report" / "latents.html"
    url = f"{page.as_uri()}#sae={s.key}&latent={latent['latent']}"
    dom, console = open_page(url)
    assert console == []
    title, contexts = _latent_page_text(dom)
    assert title == f"latent {latent['latent']}"
    tok = load_tokenizer(cfg.model)
    want = ["".join(tok.decode([t]) if t >= 0 else "" for t in c["window"]).replace("\n", "\u21b5")
            for c in s.contexts_of(latent["latent"])]
    assert len(want) == latent["n_contexts"] and contexts == want
    assert f"frequency {latent['frequency']:.3g}" in dom and f"({latent['n_firing']} of" in dom
    boosted = tok.decode([latent["top_boosted"][0]]).replace("\n", "\u21b5")
    assert f"boosts: {html.escape(boosted, quote=False)} (" in dom
    shot = tmp_path / "latents.png"
    open_page(url, screenshot=shot)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_copies_each_saes_browser_script_from_its_inspect_unit(first_run, tmp_path):
    """report/latents/sae_N.js holds the bytes the SAE's inspect unit wrote (browser.js beside its latents),
    and a root whose inspect units wrote none (before they did) gets the same bytes rendered by the report."""
    _, _, cfg_dict, _ = first_run
    cfg = SuiteConfig.model_validate(cfg_dict)
    root = StorageRoot(cfg.storage.root)
    report = Path(cfg.storage.root) / "report"
    saes = json.loads(re.search(r"saes: (\[.*\]), window:", (report / "latents/index.js").read_text()).group(1))
    assert len(saes) == 24
    for entry in saes:
        stored = root.read_bytes(f"latents/{entry['key']}/browser.js")
        assert (report / entry["file"]).read_bytes() == stored
        s = load_sae_latents(root, entry["site"], entry["layer"], entry["width"], entry["setting"])
        assert sae_script(s).encode() == stored
    bare = StorageRoot(str(tmp_path))
    s = load_sae_latents(root, saes[0]["site"], saes[0]["layer"], saes[0]["width"], saes[0]["setting"])
    assert stored_script(bare, s) == sae_script(s)  # nothing stored there: rendered


def test_the_latent_browser_finds_latents_by_a_token_they_fire_on_or_promote(first_run):
    _, _, cfg_dict, _ = first_run
    cfg = SuiteConfig.model_validate(cfg_dict)
    s, latent = _most_frequent_with_contexts(StorageRoot(cfg.storage.root), cfg)
    tok = load_tokenizer(cfg.model)
    query = tok.decode([latent["top_boosted"][0]]).strip().lower()
    window = s.window
    fires = {c["latent"] for c in s.contexts.to_pylist() if query in tok.decode([c["window"][window]]).lower()}
    promotes = {r["latent"] for r in s.stats.to_pylist()
                if any(query in tok.decode([t]).lower() for t in r["top_boosted"])}
    page = Path(cfg.storage.root) / "report" / "latents.html"
    dom, console = open_page(f"{page.as_uri()}#sae={s.key}&q={query}")
    assert console == []
    assert f"{len(fires | promotes)} latents matching" in dom, query


def test_scopeflow_latents_prints_a_latents_contexts(first_run):
    _, path, cfg_dict, _ = first_run
    cfg = SuiteConfig.model_validate(cfg_dict)
    s, latent = _most_frequent_with_contexts(StorageRoot(cfg.storage.root), cfg)
    setting = s.setting
    out = cli("latents", str(path), "--site", "res", "--layer", "0", "--width", str(s.width), "--setting", setting,
              "--latent", str(latent["latent"]))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{s.key} latent {latent['latent']}: frequency")
    shown = [line for line in lines if " seq " in line and "[[" in line]
    assert len(shown) == latent["n_contexts"]
    listing = cli("latents", str(path), "--site", "res", "--layer", "0", "--width", str(s.width), "--setting", setting)
    assert listing.returncode == 0 and f"{s.key}: {s.width} latents" in listing.stdout
    bad = cli("latents", str(path), "--site", "res", "--layer", "1")
    assert bad.returncode == 2 and "no latents of res/layer_1" in bad.stderr


def test_rerun_rules(first_run):
    tmp, path, cfg_dict, _ = first_run
    root = StorageRoot(cfg_dict["storage"]["root"])

    t0 = end_times(root)
    proc = cli("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to do" in proc.stdout
    assert changed(t0, end_times(root)) == set()

    # one unit's output deleted: that unit and what depends on it
    root.remove("saes/res/layer_2")
    proc = cli("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    t1 = end_times(root)
    assert changed(t0, t1) == {"train:res/layer_2", "evaluate:res/layer_2", "inspect:res/layer_2", "report:suite"}

    # an inspect setting changed: the inspect units and the report (its latent browser shows them)
    cfg_dict["inspect"] = {"top_k": 8}
    write_config(path, cfg_dict)
    proc = cli("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    t1b = end_times(root)
    assert changed(t1, t1b) == {f"inspect:{site}/layer_{layer}" for site in ("res", "att", "mlp")
                                for layer in (0, 2)} | {"report:suite"}
    t1 = t1b

    # a training setting changed: every train unit and what depends on it, nothing upstream
    cfg_dict["sae"]["lr"] = 0.002
    write_config(path, cfg_dict)
    proc = cli("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    t2 = end_times(root)
    assert changed(t1, t2) == ({f"{s}:{site}/layer_{layer}" for s in ("train", "evaluate", "inspect")
                                for site in ("res", "att", "mlp") for layer in (0, 2)} | {"report:suite"})

    # rerun one (site, layer) of one stage: forced, plus its dependents
    proc = cli("rerun", str(path), "--stage", "shuffle", "--site", "att", "--layer", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert changed(t2, end_times(root)) == {"shuffle:att/layer_0", "train:att/layer_0", "evaluate:att/layer_0",
                                            "inspect:att/layer_0", "report:suite"}

    status = cli("status", str(path))
    assert status.returncode == 0, status.stderr
    assert "train" in status.stdout and "6" in status.stdout


def test_a_corrupt_chunk_fails_its_reader_and_a_rerun_of_its_writer_repairs_it(first_run):
    """One flipped byte in an activation chunk fails the shuffle unit reading it (crc32c) with a message naming
    the array and the chunk; siblings go on, the units behind it wait, nothing is marked complete, and the run
    names the extract unit that wrote the chunk and the command that re-runs it, which repairs the chunk."""
    tmp, path, cfg_dict, _ = first_run
    root = StorageRoot(cfg_dict["storage"]["root"])
    array = Path(cfg_dict["storage"]["root"]) / "activations/res/layer_0/shard_00000/x"
    shard_file = array / "c/0/0"  # one zarr shard holds both 4096-row chunks of this array
    good = shard_file.read_bytes()
    chunk_bytes = 4096 * 64 * 2 + 4  # rows x width x bf16, then the chunk's crc32c
    bad = bytearray(good)
    bad[chunk_bytes + 1000] ^= 0xFF
    shard_file.write_bytes(bytes(bad))
    t0 = end_times(root)
    proc = cli("rerun", str(path), "--stage", "shuffle", "--layer", "0")  # res/layer_0 and its two siblings
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "shuffle:res/layer_0" in proc.stderr
    assert f"{array}: chunk 1 (rows 4096-" in proc.stderr
    assert "written by extract:shard_00000" in proc.stderr
    repair = f"scopeflow rerun {path} --stage extract --shard 0"
    assert repair in proc.stderr
    ledger = Ledger(root)
    failed = ledger.get("shuffle", "res/layer_0")
    # the same bytes would fail again: an input error, tried once, with the chunk's facts as fields
    assert failed.status == "failed" and failed.error.type == "CorruptChunkError" and failed.attempt == 1
    assert failed.error.kind == "input" and failed.error.facts["path"] == str(array) and failed.error.facts["chunk"] == 1
    assert changed(t0, end_times(root)) >= {"shuffle:att/layer_0", "train:att/layer_0", "evaluate:mlp/layer_0"}
    for stage in ("train", "evaluate", "inspect"):
        assert ledger.get(stage, "res/layer_0").ended_at.isoformat() == t0[f"{stage}:res/layer_0"]
    assert ledger.get("report", "suite").ended_at.isoformat() == t0["report:suite"]

    t1 = end_times(root)
    fixed = cli(*repair.split()[1:])
    assert fixed.returncode == 0, fixed.stdout[-2000:] + fixed.stderr[-2000:]
    assert shard_file.read_bytes() == good  # re-extracted bit for bit
    ran = changed(t1, end_times(root))
    assert "extract:shard_00000" in ran and "extract:shard_00001" not in ran
    assert {"shuffle:res/layer_0", "train:res/layer_0", "evaluate:res/layer_0", "inspect:res/layer_0",
            "report:suite"} <= ran
    assert all(ledger.get(s, "res/layer_0").status == "complete" for s in ("shuffle", "train", "evaluate", "inspect"))
