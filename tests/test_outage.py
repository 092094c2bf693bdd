"""The object store going away for 30 s mid-extract, for real: a TCP proxy the test controls between s3fs and
moto's S3 server refuses connections, the units retry with backoff, the run (the CLI as a user starts it)
completes, every output is byte for byte a clean run's, and nothing was marked complete that was not fully
written."""
from __future__ import annotations

import re
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

from storage import layout
from storage.ledger import Ledger
from storage.root import StorageRoot
from tests.faults import (Cli, assert_same_outputs, clean_reference, complete_outputs_read_back, fault_suite,
                          statuses, until)
from tests.helpers import ReferenceRun, api_get, root_files, suite_task_runs, write_config
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

BUCKET = "scopeflow-test"
OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_assets) -> ReferenceRun:
    yield from clean_reference(tmp_path_factory)


def _task_runs(api_url: str, config_path: Path, names: set[str]) -> list[dict]:
    """This run's task runs of those names, with their states."""
    runs = [r for r in suite_task_runs(api_url, config_path)[2] if r["name"] in names]
    for r in runs:
        r["states"] = sorted(api_get(api_url, f"/task_run_states/?task_run_id={r['id']}"), key=lambda s: s["timestamp"])
    return runs


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def outage(tmp_path_factory, s3_endpoint, prefect_server, reference):
    """The suite on S3 through a proxy that goes down at the first PUT of activation data (the extract unit
    has written its arrays' metadata, not their rows) and stays down 30 s, refusing connections."""
    tmp = tmp_path_factory.mktemp("outage")
    prefix = f"faults/{uuid.uuid4().hex[:10]}"
    trigger = re.compile(rb"PUT /" + f"{BUCKET}/{prefix}/".encode() + rb"activations/[^ ?]*/x/c/")
    proxy = TcpProxy("127.0.0.1", urlparse(s3_endpoint).port, trigger=trigger).start()
    url = f"s3://{BUCKET}/{prefix}"
    path = write_config(tmp / "suite.yaml", fault_suite(tmp, url, proxy.url, task_retries=4,
                                                   retry_delay_seconds=[5, 10, 15, 20]))
    direct = StorageRoot(url, {"endpoint_url": s3_endpoint})  # the test's own view, around the proxy
    cli = Cli(tmp, "run", "run", str(path), api_url=prefect_server)
    try:
        until("outage", proxy.triggered.is_set, cli, every=0.05)
        t_down, t_down_wall = proxy.downs[0], time.time()
        at_outage = statuses(direct)
        refused = _refused(proxy.port)
        time.sleep(max(0.0, t_down + OUTAGE_S - time.monotonic()))
        proxy.up()
        rc = cli.wait(600)
    finally:
        proxy.stop()
        cli.close()
    direct.fs.invalidate_cache()  # listings the polling cached
    facts = dict(rc=rc, cli=cli, direct=direct, at_outage=at_outage, refused=refused, t_down_wall=t_down_wall,
                 run_s=time.monotonic() - cli.started, outage_s=proxy.ups[0] - t_down, dropped=proxy.dropped,
                 accepted=proxy.accepted, task_runs=_task_runs(prefect_server, path, {"tokenize:corpus", "extract:shard_00000",
                                                                                      "extract:shard_00001"}))
    print(f"\noutage: run {facts['run_s']:.1f} s, down {facts['outage_s']:.1f} s, {proxy.dropped} open "
          f"connection(s) reset, ledger at the outage {at_outage}")
    ledger = Ledger(direct)
    for r in facts["task_runs"]:
        rec = ledger.get(*r["name"].split(":", 1))
        r["ledger_attempt"] = rec.attempt
        print(f"  {r['name']}: ledger attempt {rec.attempt}, run_count {r['run_count']}, states " + ", ".join(
            f"{s['name']}@{_ts(s['timestamp']) - t_down_wall:+.1f}s" for s in r["states"]))
    return facts


def test_an_object_store_outage_mid_extract_is_retried_and_the_run_completes(outage):
    assert outage["rc"] == 0, outage["cli"].failed()
    # the outage hit while an extract unit was running (its record said so on the store itself)
    assert "running" in {s for k, s in outage["at_outage"].items() if k.startswith("extract:")}, outage["at_outage"]
    assert outage["outage_s"] >= OUTAGE_S and outage["refused"]
    # ... and failed a unit, which Prefect retried after the store was back
    retried = [r for r in outage["task_runs"] if r["run_count"] >= 2]
    assert retried, [(r["name"], r["run_count"]) for r in outage["task_runs"]]
    for r in retried:
        assert r["state_type"] == "COMPLETED" and "AwaitingRetry" in [s["name"] for s in r["states"]], r["states"]
    ledger = Ledger(outage["direct"])
    assert all(ledger.get(*r["name"].split(":", 1)).status == "complete" for r in retried)
    # the unit the outage caught running was retried, and its ledger record counts that (the ledger counts the
    # attempts whose `running` record reached the store; a unit that started during the outage counts fewer)
    hit = {k for k, status in outage["at_outage"].items() if status == "running"}
    assert hit <= {r["name"] for r in retried}
    assert all(r["ledger_attempt"] >= 2 for r in retried if r["name"] in hit), retried


def test_after_the_outage_every_output_is_byte_identical_to_a_clean_run(outage, reference):
    got = root_files(outage["direct"])
    assert not [k for k in got if k.startswith("checkpoints/") or k == layout.LEASE]
    assert_same_outputs(got, reference)


def test_after_the_outage_no_complete_record_points_at_a_partial_output(outage):
    assert complete_outputs_read_back(outage["direct"]) >= 7
