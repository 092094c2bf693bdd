"""Bad input fails in a way the user can act on: the cause named (file and field, or file and line), a
non-zero exit, no traceback, nothing marked complete, and no retry (an `InputError`).

Three layers, cheapest first:
- prepare-time (`flows/prepare.py`, before Ray or Prefect start): config, model, storage, sizes and the first
  bytes of each corpus file, through the real CLI (`run` and `status`), in-process; nothing may be created;
- inside the tokenize unit (content past the first bytes, too little text): the unit run in-process as a Ray
  worker runs it (`tasks.execute.run_unit`), checking the InputError and its ledger record;
- one scenario through `scopeflow run` itself, Prefect and Ray included (slow).
"""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.config import SuiteConfig
from flows.prepare import prepare_suite
from storage.errors import InputError, is_input_error
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.execute import run_unit
from tasks.lm.corpus import HEAD_BYTES
from tasks.lm.embedded import ensure_embedded_assets
from tasks.plan import plan_suite
from tests.helpers import IT_MODEL, cli, small_suite_dict, write_config

GOOD_LINE = json.dumps({"text": "Jack: Where is the bottle? Rosa: I keep the box every day."}) + "\n"


def _good_lines(n_bytes: int) -> str:
    """Valid jsonl documents filling at least n_bytes."""
    return GOOD_LINE * (n_bytes // len(GOOD_LINE) + 1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_aws(monkeypatch) -> None:
    """No credentials anywhere in the AWS chain: environment, profile files, instance metadata."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def complete_records(root: Path) -> list[Path]:
    """Ledger records marked complete under a local root."""
    return [p for p in root.glob("state/**/*.json") if json.loads(p.read_text()).get("status") == "complete"]


# ---- prepare time: each case is (overrides of the small suite, regex the one line must match) -------------
# A case may be a function of (tmp_path, monkeypatch) that writes the files it needs first.

def _corpus(name: str, data: bytes | str):
    def make(tmp: Path, mp) -> dict:
        p = tmp / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return {"corpus.paths": [str(p)]}
    return make


def _parquet(tmp: Path, mp) -> dict:
    pq.write_table(pa.table({"body": ["a document"]}), tmp / "nocol.parquet")
    return {"corpus.paths": [str(tmp / "nocol.parquet")]}


def _root_under_file(tmp: Path, mp) -> dict:
    (tmp / "afile").write_text("not a folder")
    return {"storage.root": str(tmp / "afile" / "run")}


def _model_without_config(tmp: Path, mp) -> dict:
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.bin").write_bytes(b"")
    return {"model.name_or_path": str(tmp / "model")}


def _eval_model(**changes) -> dict:
    return {"evaluate.models": [{**IT_MODEL, **changes}]}


def _eval_model_of_other_shape(tmp: Path, mp) -> dict:
    """A model folder whose config has the suite model's type but two layers, not four."""
    config = json.loads((ensure_embedded_assets().it_model_dir / "config.json").read_text())
    config = {**config, "num_hidden_layers": 2, "layer_types": config["layer_types"][:2]}
    (tmp / "shallow").mkdir()
    (tmp / "shallow" / "config.json").write_text(json.dumps(config))
    return _eval_model(model={"name_or_path": str(tmp / "shallow")})


def _eval_model_broken_config(tmp: Path, mp) -> dict:
    config = json.loads((ensure_embedded_assets().it_model_dir / "config.json").read_text())
    (tmp / "broken").mkdir()
    (tmp / "broken" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))  # layer_types: 4
    return _eval_model(model={"name_or_path": str(tmp / "broken")})


def _eval_chats(line: str):
    def make(tmp: Path, mp) -> dict:
        (tmp / "chats.jsonl").write_text(line)
        return _eval_model(paths=[str(tmp / "chats.jsonl")])
    return make


def _s3(credentials: bool):
    def make(tmp: Path, mp) -> dict:
        _no_aws(mp)
        if credentials:
            mp.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
        return {"storage": {**small_suite_dict(tmp)["storage"], "root": "s3://scopeflow-bad/runs/x",
                            "storage_options": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}"}}}
    return make


def _topk(tmp: Path, mp) -> dict:
    return {"sae": {**small_suite_dict(tmp)["sae"], "architectures": ["jumprelu", "topk"], "topk_ks": [100]}}


PREPARE_CASES = {
    # config
    "unknown_field": ({"sae.learning_rate": 0.1}, r"sae\.learning_rate: unknown field"),
    "bad_value": ({"corpus.ctx": 1}, r"corpus\.ctx: Input should be greater than or equal to 2 \(got 1\)"),
    "bad_site": ({"sites": ["res", "resid"]}, r"sites\.1: Input should be 'res', 'att' or 'mlp' \(got 'resid'\)"),
    "layer_out_of_range": ({"layers": [0, 7]}, r"layer 7 is out of range .*4 layers"),
    "unknown_stage": ({"orchestration.cpus_per_unit": {"trian": 1}},
                      r"orchestration: .*cpus_per_unit: unknown stage 'trian' \(one of tokenize, extract"),
    "epochs_of_a_width_not_trained": ({"sae.epochs_by_width": {512: 4}},
                                      r"sae: Value error, epochs_by_width names widths \[512\] that are not in "
                                      r"widths \[64, 128\]"),
    "missing_corpus": ({"corpus.paths": ["/nonexistent/corpus.jsonl"]},
                       r"no corpus file matches /nonexistent/corpus\.jsonl"),
    # model
    "missing_model": ({"model.name_or_path": "/nonexistent/model"}, r"model folder does not exist: /nonexistent/model"),
    "model_without_config": (_model_without_config, r"model\.name_or_path: no config\.json in .*/model"),
    "ctx_over_positions": ({"corpus.ctx": 1000},
                           r"corpus\.ctx: longer than the model's positions \(got 1000; .*max_position_embeddings=256\); "
                           r"set corpus\.ctx to at most 256"),
    # further evaluation models (the base -> instruction-tuned transfer)
    "eval_model_missing": (_eval_model(model={"name_or_path": "/nonexistent/it"}),
                           r"evaluate\.models\[0\]\.model\.name_or_path: model folder does not exist: /nonexistent/it"),
    "eval_model_other_shape": (_eval_model_of_other_shape,
                               r"evaluate\.models\[0\]\.model: not the suite model's architecture, so its SAEs cannot be "
                               r"spliced in \(got .*/shallow: type, layers, site widths gemma2, 2, .*has gemma2, 4"),
    "eval_model_broken_config": (_eval_model_broken_config,
                                 r"evaluate\.models\[0\]\.model\.name_or_path: .*/broken's config\.json does not load "
                                 r"\(StrictDataclassClassValidationError: .*must be equal to the number of `layer_types`"),
    "eval_model_without_chat_template": (_eval_model(model={"name_or_path": "embedded:tiny-gemma2"}),
                                         r"evaluate\.models\[0\]\.chat: embedded:tiny-gemma2's tokenizer has no chat "
                                         r"template \(got chat: true\)"),
    "eval_model_missing_text": (_eval_model(paths=["/nonexistent/chats.jsonl"]),
                                r"evaluate\.models\[0\]\.paths: no corpus file matches /nonexistent/chats\.jsonl"),
    "eval_model_bad_chat": (_eval_chats('{"messages": "hello"}\n'),
                            r"evaluate\.models\[0\]\.paths: .*/chats\.jsonl:1: field 'messages' is not a conversation"),
    "eval_model_named_base": (_eval_model(name="base"),
                              r"evaluate\.models\.0\.name: .*'base' names the suite's own model"),
    # storage
    "root_under_file": (_root_under_file, r"storage\.root: cannot be written: .*/afile is a regular file, not a folder "
                                          r"\(got '.*/afile/run'\)"),
    "s3_no_credentials": (_s3(False), r"storage\.root: no AWS credentials for bucket 'scopeflow-bad' .*"
                                      r"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"),
    "s3_unreachable": (_s3(True), r"storage\.root: S3 endpoint http://127\.0\.0\.1:\d+ unreachable for bucket "
                                  r"'scopeflow-bad' within 3 s .*storage_options\.endpoint_url"),
    # sizes
    "n_seqs_over_eval_split": ({"evaluate.n_seqs": 9},
                               r"evaluate\.n_seqs: more sequences than the held-out split holds \(got 9; "
                               r"corpus\.n_eval_seqs=8\)"),
    "max_train_seqs_below_one_batch": ({"corpus.max_train_seqs": 2},
                                       r"corpus\.max_train_seqs: too few train sequences for one batch of "
                                       r"sae\.batch_size=256 \(got 2: at most 2 x \(corpus\.ctx-1=127\) = 254 "
                                       r"activation rows.*at least 3"),
    "batch_larger_than_data": ({"sae.batch_size": 1_000_000},
                               r"sae\.batch_size=1000000 \(got 96: at most 96 x .* = 12,192 activation rows"),
    "topk_k_over_width": (_topk, r"sae\.topk_ks: k larger than the narrowest SAE's latents \(got 100; sae\.widths "
                                 r"has 64\)"),
    # corpus content a prepare-time read of the first bytes finds
    "empty_file": (_corpus("empty.jsonl", ""), r"corpus\.paths: .*/empty\.jsonl: empty file"),
    "malformed_line": (_corpus("bad.jsonl", GOOD_LINE + "{oops\n"), r"/bad\.jsonl:2: not valid JSON \("),
    "non_object_line": (_corpus("arr.jsonl", GOOD_LINE * 2 + "[1, 2]\n"),
                        r"/arr\.jsonl:3: not a JSON object \(got an array\)"),
    "missing_field": (_corpus("nofield.jsonl", GOOD_LINE + '{"body": "x"}\n'),
                      r"/nofield\.jsonl:2: no field 'text' \(corpus\.text_field\); the line has 'body'"),
    "non_string_text": (_corpus("num.jsonl", GOOD_LINE + '{"text": 5}\n'),
                        r"/num\.jsonl:2: field 'text' is not a string \(got a number\) \(corpus\.text_field\)"),
    "undecodable_bytes": (_corpus("bytes.jsonl", GOOD_LINE.encode() + b'{"text": "\xff\xfe"}\n'),
                          rf"/bytes\.jsonl: not valid UTF-8 at byte {len(GOOD_LINE) + 10} \(line 2\)"),
    "not_parquet": (_corpus("fake.parquet", "just text"), r"/fake\.parquet: not a parquet file"),
    "parquet_without_column": (_parquet, r"/nocol\.parquet: no column 'text' \(corpus\.text_field\); columns: \['body'\]"),
    "txt_without_paragraphs": (_corpus("blank.txt", "\n\n   \n\n"), r"/blank\.txt: no text, only whitespace"),
}


@pytest.mark.parametrize("case", sorted(PREPARE_CASES))
@pytest.mark.parametrize("command", ["run", "status"])
def test_bad_input_is_one_line_before_anything_starts(case, command, tmp_path, capsys, monkeypatch, embedded_assets):
    make, pattern = PREPARE_CASES[case]
    overrides = make(tmp_path, monkeypatch) if callable(make) else make
    path = write_config(tmp_path / "bad.yaml", small_suite_dict(tmp_path, **overrides))
    code = main([command, str(path)])
    out, err = capsys.readouterr()
    err = err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in out + err
    assert str(path) in err
    assert re.search(pattern, err), err
    assert not (tmp_path / "run").exists()  # nothing created, so nothing marked complete
    assert not (tmp_path / "prefect").exists()  # Prefect never started


YAML_CASES = {
    "bad_yaml": ({"bad.yaml": "name: [unclosed\n"}, r"bad\.yaml: not valid YAML \("),
    "extends_loop": ({"bad.yaml": "extends: other.yaml\n", "other.yaml": "extends: bad.yaml\n"},
                     r"bad\.yaml: extends itself through .*bad\.yaml -> .*other\.yaml"),
    "extends_missing_parent": ({"bad.yaml": "extends: base.yaml\nname: x\n"}, r"base\.yaml: config file not found"),
    "not_a_mapping": ({"bad.yaml": "- just\n- a list\n"}, r"bad\.yaml: expected a mapping of fields"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
@pytest.mark.parametrize("command", ["run", "status"])
def test_bad_config_file_is_one_line(case, command, tmp_path, capsys):
    files, pattern = YAML_CASES[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code = main([command, str(tmp_path / "bad.yaml")])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    assert re.search(pattern, err), err


def test_read_only_root_stops_run_but_not_status(tmp_path, capsys, monkeypatch, embedded_assets):
    """(The tests run as root, to whom every folder is writable: os.access stands in for a read-only mount.)"""
    import flows.prepare

    monkeypatch.setattr(flows.prepare.os, "access", lambda path, mode: False)
    path = write_config(tmp_path / "c.yaml", small_suite_dict(tmp_path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(
        rf"storage\.root: cannot be written: {re.escape(str(tmp_path))} is not writable, so the root cannot be "
        r"created in it \(got '.*/run'\); choose a root in a writable folder", err), err
    assert main(["status", str(path)]) == 0  # status only reads
    assert not (tmp_path / "run").exists()


def test_s3_bucket_missing_names_endpoint_and_bucket(tmp_path, capsys, s3_endpoint, embedded_assets):
    """A real S3 endpoint (moto) that answers, without the bucket."""
    cfg = small_suite_dict(tmp_path)
    cfg["storage"].update(root="s3://no-such-bucket/runs/x", storage_options={"endpoint_url": s3_endpoint})
    path = write_config(tmp_path / "bad.yaml", cfg)
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(rf"storage\.root: bucket 'no-such-bucket' not found at {re.escape(s3_endpoint)}", err), err
    cfg["storage"]["root"] = "s3://scopeflow-test/runs/fine"  # the bucket the fixture made: prepare passes
    prepare_suite(SuiteConfig.model_validate(cfg), "ok.yaml", write=False)


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_unknown_rerun_stage(tmp_path, capsys, embedded_assets):
    path = write_config(tmp_path / "c.yaml", small_suite_dict(tmp_path))
    assert main(["rerun", str(path), "--stage", "finetune"]) == 2
    assert "unknown stage 'finetune'" in capsys.readouterr().err


# ---- inside the tokenize unit: content past the first bytes, and sizes known only after tokenizing --------

def _late(bad: bytes) -> bytes:
    """A bad line after HEAD_BYTES of good ones: the prepare-time read cannot see it."""
    return _good_lines(HEAD_BYTES).encode() + bad


_LATE_LINE = HEAD_BYTES // len(GOOD_LINE) + 2  # the bad line's number in _late()

UNIT_CASES = {
    "late_malformed_line": ({"corpus.paths": ["late.jsonl"]}, _late(b"{oops\n"),
                            rf"/late\.jsonl:{_LATE_LINE}: not valid JSON \("),
    "late_non_object_line": ({"corpus.paths": ["late.jsonl"]}, _late(b'"a string"\n'),
                             rf"/late\.jsonl:{_LATE_LINE}: not a JSON object \(got a string\)"),
    "late_missing_field": ({"corpus.paths": ["late.jsonl"]}, _late(b'{"content": "x"}\n'),
                           rf"/late\.jsonl:{_LATE_LINE}: no field 'text' \(corpus\.text_field\)"),
    "late_non_string_text": ({"corpus.paths": ["late.jsonl"]}, _late(b'{"text": ["x"]}\n'),
                             rf"/late\.jsonl:{_LATE_LINE}: field 'text' is not a string \(got an array\)"),
    "late_undecodable_bytes": ({"corpus.paths": ["late.jsonl"]}, _late(b'{"text": "caf\xe9"}\n'),
                               rf"/late\.jsonl: not valid UTF-8 at byte \d+ \(line {_LATE_LINE}\)"),
    "too_little_text": ({"corpus.paths": ["late.jsonl"]}, GOOD_LINE.encode() * 3,
                        r"corpus\.paths: too little text in .*/late\.jsonl: 3 documents, \d+ tokens pack into \d "
                        r"sequences of corpus\.ctx=128; need at least 9 \(corpus\.n_eval_seqs=8 held out"),
    "train_split_below_one_batch": ({"corpus.paths": ["late.jsonl"], "corpus.max_train_seqs": None,
                                     "corpus.n_eval_seqs": 1, "sae.batch_size": 100_000}, _good_lines(40_000).encode(),
                                    r"corpus\.paths: the train split of .*/late\.jsonl holds [\d,]+ activation rows "
                                    r"\(\d+ sequences, BOS/EOS/padding excluded\), fewer than one batch "
                                    r"\(sae\.batch_size=100000\): add text"),
}


@pytest.mark.parametrize("case", sorted(UNIT_CASES))
def test_bad_content_fails_the_unit_as_an_input_error(case, tmp_path, embedded_assets):
    overrides, data, pattern = UNIT_CASES[case]
    (tmp_path / "late.jsonl").write_bytes(data)
    overrides = {k: [str(tmp_path / p) for p in v] if k == "corpus.paths" else v for k, v in overrides.items()}
    cfg = SuiteConfig.model_validate(small_suite_dict(tmp_path, **overrides))
    prepared = prepare_suite(cfg, "late.yaml", write=False)  # the first bytes are fine: prepare passes
    spec = plan_suite(cfg, prepared.layers, prepared.model_name, None)["tokenize"][0]
    with pytest.raises(InputError) as info:
        run_unit(cfg, spec, prepared.root)
    msg = str(info.value)
    assert is_input_error(info.value) and len(msg.splitlines()) == 1
    assert re.search(pattern, msg), msg
    rec = Ledger(prepared.root).get("tokenize", spec.unit)
    assert rec.status == "failed" and rec.error.type == "InputError" and rec.error.facts["input_error"] is True
    assert not complete_records(tmp_path / "run")
    assert not (tmp_path / "run" / "tokens").exists()


def test_is_input_error_sees_through_wrapping():
    inner = InputError("c.jsonl:3: not valid JSON (x)", path="c.jsonl", line=3)
    try:
        try:
            raise inner
        except InputError as e:
            raise RuntimeError("unit failed") from e
    except RuntimeError as outer:
        assert is_input_error(outer)
    assert not is_input_error(OSError("connection reset")) and not is_input_error(None)
    assert not is_input_error(ValueError("a plain ValueError is not marked"))
    import pickle

    back = pickle.loads(pickle.dumps(inner))  # as Ray and Prefect carry it between processes
    assert type(back) is InputError and str(back) == str(inner) and back.facts == inner.facts
    assert inner.facts == {"input_error": True, "path": "c.jsonl", "line": 3}


# ---- one scenario through `scopeflow run`'s own code: Prefect, Ray, the failure summary, then status ------

@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, ray_session, embedded_assets):
    """On the session's warm Ray and Prefect server (tests.helpers.cli): a run whose first unit fails needs no
    fresh interpreter and Ray instance of its own (signals and processes: tests/test_faults.py)."""
    tmp = tmp_path_factory.mktemp("bad-run")
    (tmp / "late.jsonl").write_bytes(_late(b"{oops\n"))
    cfg = small_suite_dict(tmp, **{"corpus.paths": [str(tmp / "late.jsonl")]})
    cfg["orchestration"]["task_retries"] = 2  # an input error is still tried once only
    path = write_config(tmp / "bad.yaml", cfg)
    proc = cli("run", str(path))
    return tmp, path, proc


@pytest.mark.slow
def test_bad_content_in_a_unit_fails_the_run_and_is_recorded(bad_run, capsys):
    tmp, path, proc = bad_run
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not complete_records(tmp / "run")
    rec = Ledger(StorageRoot(str(tmp / "run"))).get("tokenize", "corpus")
    assert rec.status == "failed" and rec.error.type == "InputError" and rec.attempt == 1
    assert re.search(rf"late\.jsonl:{_LATE_LINE}: not valid JSON", rec.error.message)
    # `scopeflow status` names the cause, in one line per failed unit
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"tokenize:corpus\s+InputError: .*late\.jsonl:{_LATE_LINE}: not valid JSON", out), out


@pytest.mark.slow
def test_bad_content_in_a_unit_is_named_in_the_run_output(bad_run):
    """The run's last lines name the unit, its cause and what to do; no framework traceback."""
    tmp, path, proc = bad_run
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(err) <= 3, proc.stderr
    assert re.search(rf"tokenize:corpus .*late\.jsonl:{_LATE_LINE}: not valid JSON", err[-2]), err
    assert err[-1].strip() == f"fix that input, then: scopeflow run {path}", err
