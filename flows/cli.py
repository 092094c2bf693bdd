"""`scopeflow`: run, status, rerun, plan, report, import, server, latents.

Prefect reads PREFECT_API_URL at import, so nothing here imports prefect (or the flows) until the server is
up and the variable set; config problems are reported before any of that, in one line.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path

from rich.table import Table

from flows.config import DEFAULT_CONFIG, ConfigError, SuiteConfig, load_suite_config
from flows.latents_cli import add_parser as add_latents_parser
from flows.prepare import open_root, prepare_suite
from flows.status import lease_line, stage_status
from flows.terminal import console, err_console, fail
from infra.prefect_server import prefect_api, start_server, stop_server
from storage.layout import REPORT_INDEX, import_evals_dir
from storage.lease import LeaseHeldError
from storage.lease import current as current_lease
from tasks.capacity import capacity_plan, describe_groups, load_shape, load_throughputs
from tasks.lm.model import load_config
from tasks.lm.sites import TL_HOOKS, n_layers, site_width
from tasks.registry import get_stage
from tasks.release_import import import_release
from tasks.reporting import TABLE_COLUMNS, format_table_rows, sorted_rows
from tasks.stages.report import collect_metrics
from tasks.stages.tokenize import n_train_seqs


# Prefect's own lines go to the dashboard and the Prefect logs; the terminal shows our progress bars, tables,
# and a summary that names each failed unit's cause.
_QUIET_CONSOLE = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
#: their records (tracebacks of failed units and flows among them) reach the API only, not the terminal
_API_ONLY_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _print_metrics(cfg: SuiteConfig, keys: list[tuple[str, int]]) -> None:
    root = open_root(cfg)
    rows = collect_metrics(root, keys)
    table = Table(title=f"SAEs of suite '{cfg.name}'", title_justify="left")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col == "site" else "right")
    for r in format_table_rows(sorted_rows(rows)):
        table.add_row(*r)
    console.print(table)
    console.print(f"report: {root.path(REPORT_INDEX)}", highlight=False, soft_wrap=True)


def _drain_prefect_logs() -> None:
    """Send the last queued log lines and events while the server is still up (else they retry against a
    stopped server at exit: 'Error logging to API', a minute of waiting)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)


def _execute(config_path: str, rerun: list[dict] | None) -> int:
    try:
        cfg = load_suite_config(config_path)
        with console.status("checking config and model (the embedded model is built once, ~2 min)"):
            prepared = prepare_suite(cfg, config_path, write=False, need_write=True)
    except ConfigError as e:
        return fail(str(e))
    holder = current_lease(prepared.root)
    if holder is not None and not holder.is_stale():
        return fail(str(LeaseHeldError(prepared.root.url, holder)))
    if holder is not None:
        err_console.print(f"notice: taking over the lease of {holder.holder()} ({holder.stale_reason()})",
                          highlight=False, soft_wrap=True)
    for k, v in _QUIET_CONSOLE.items():
        os.environ.setdefault(k, v)
    t0 = time.monotonic()
    # SIGTERM unwinds like Ctrl-C: the runner cancels its units and records them interrupted, then the Ray
    # instance and the Prefect server this process started are stopped on the way out
    previous_handler = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        with contextlib.ExitStack() as ray_run, \
                prefect_api(Path(cfg.orchestration.prefect_home).resolve(),
                            while_starting=lambda: _start_ray(ray_run, cfg)) as api_url:
            console.print(f"Prefect API: {api_url}", highlight=False)
            from flows.suite import suite_flow

            for name in _API_ONLY_LOGGERS:
                logging.getLogger(name).propagate = False
            try:
                state = suite_flow(config_path, rerun=rerun, return_state=True)
            finally:
                _drain_prefect_logs()
                ray_run.close()  # the Ray instance this process started, before the server its workers report to
            if not state.is_completed():
                try:
                    state.result()
                except Exception as e:  # the flow's own summary: failed units, causes, what to do
                    err_console.print(f"run failed after {time.monotonic() - t0:.1f} s: {e}", highlight=False,
                                      soft_wrap=True)
                return 1
            result = state.result()
    except (KeyboardInterrupt, SystemExit):  # Prefect turns SIGTERM into its own exit
        err_console.print(f"interrupted after {time.monotonic() - t0:.1f} s: running units are recorded "
                          f"interrupted; `scopeflow run {config_path}` resumes", highlight=False, soft_wrap=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    ran = len(result["ran"])
    if ran == 0:
        console.print(f"nothing to do: every unit is complete with a matching fingerprint ({prepared.root.url})",
                      highlight=False)
    else:
        per_stage = ", ".join(f"{s} {c['ran']}/{c['units']}" for s, c in result["stages"].items())
        console.print(f"ran {ran} unit(s) in {time.monotonic() - t0:.1f} s ({per_stage})", highlight=False)
    _print_metrics(cfg, [(s, layer) for s in cfg.sites for layer in prepared.layers])
    return 0


def _start_ray(stack: contextlib.ExitStack, cfg: SuiteConfig) -> None:
    """The run's Ray, started while its Prefect server starts, so the workers import meanwhile (a tiny run's
    second worker was still importing when the first unit began). Imported here: prefect reads
    PREFECT_API_URL at import, which `prefect_api` exports just before."""
    from flows.units import ray_for_run

    stack.enter_context(ray_for_run(cfg.orchestration))


def cmd_run(args) -> int:
    return _execute(args.config, None)


def cmd_rerun(args) -> int:
    try:
        get_stage(args.stage)
    except ValueError as e:
        return fail(f"--stage: {e}")
    return _execute(args.config, [{"stage": args.stage, "site": args.site, "layer": args.layer, "wave": args.wave,
                                      "shard": args.shard}])


def cmd_status(args) -> int:
    try:
        cfg = load_suite_config(args.config)
        rows = stage_status(cfg, args.config)
    except ConfigError as e:
        return fail(str(e))
    # no rules and no edge padding: the table fits an 80-column terminal
    table = Table(title=f"suite '{cfg.name}'", title_justify="left", box=None, pad_edge=False)
    for col in ("stage", "units", "done", "failed", "running", "stale", "pending", "total s", "mean s", "max s"):
        table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["stage"], *(str(r[k]) for k in ("units", "complete", "failed", "running", "stale", "pending")),
                      *(f"{r[k]:.1f}" if r[k] is not None else "-" for k in ("total_s", "mean_s", "max_s")))
    console.print(table)
    console.print(lease_line(open_root(cfg)), highlight=False, soft_wrap=True)
    for r in rows:
        for unit, msg in r["errors"]:
            console.print(f"[red]{r['stage']}:{unit}[/red] {msg}", highlight=False, soft_wrap=True)
    return 0


def cmd_report(args) -> int:
    try:
        cfg = load_suite_config(args.config)
        prepared = prepare_suite(cfg, args.config, write=False)
        _print_metrics(cfg, [(s, layer) for s in cfg.sites for layer in prepared.layers])
    except ConfigError as e:
        return fail(str(e))
    except FileNotFoundError as e:
        return fail(f"no evaluations yet ({e}); run `scopeflow run {args.config}` first")
    return 0


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


def _n_train_seqs(cfg: SuiteConfig) -> int | None:
    """The corpus cap, else the tokens already written at the root, else unknown."""
    if cfg.corpus.max_train_seqs:
        return cfg.corpus.max_train_seqs
    return n_train_seqs(open_root(cfg))


def cmd_plan(args) -> int:
    """Units, bytes, objects, FLOPs and device-hours per stage, and the storage waves, before any run."""
    try:
        cfg = load_suite_config(args.config)
        shape, shape_source = load_shape(cfg.model)
        layers = cfg.resolved_layers(shape.n_layers)
        n_train = _n_train_seqs(cfg)
        if n_train is None:
            return fail(f"{args.config}: corpus.max_train_seqs is not set and nothing is tokenized yet at "
                         f"{cfg.storage.root}: the plan needs a token count")
        bench = Path(args.throughputs)
        files = [bench / f"{name}-{args.device}.json" for name in ("extract", "train", "shuffle")]
        rates = load_throughputs(*files) if files[0].exists() and files[1].exists() else None
        plan = capacity_plan(cfg, shape, layers, n_train, rates)
    except ConfigError as e:
        return fail(str(e))
    except ValueError as e:
        return fail(f"{args.config}: {str(e).splitlines()[0]}")
    console.print(f"[bold]plan for suite '{cfg.name}'[/bold] ({args.config}): {cfg.model.name_or_path} "
                  f"({shape.n_layers} layers, d_model {shape.d_model}; shape from {shape_source})", highlight=False)
    console.print(f"{plan['n_train_seqs']:,} train sequences x {cfg.corpus.ctx} = {plan['tokens']:,} tokens; "
                  f"{plan['site_layers']} (site, layer) groups, {plan['saes']:,} SAEs; "
                  f"{_bytes(plan['bytes_per_token'])} of activations per token ({cfg.storage.activation_dtype})",
                  highlight=False)
    table = Table(title="per stage", title_justify="left")
    for col in ("stage", "on", "units", "written", "objects", "PFLOP", f"{args.device}-hours"):
        table.add_column(col, justify="left" if col in ("stage", "on") else "right")
    for r in plan["stages"]:
        table.add_row(r["stage"], r["resource"], f"{r['units']:,}", _bytes(r["bytes"]),
                      "-" if r["objects"] is None else f"{r['objects']:,}",
                      f"{r['flops'] / 1e15:,.3f}" if r["flops"] else "-",
                      "-" if r["hours"] is None else f"{r['hours']:,.2f}")
    console.print(table)
    if rates is None:
        console.print(f"hours: no measured throughputs in {bench} for device '{args.device}' (run "
                      f"benchmarks/extract.py, train.py and shuffle.py there)", highlight=False)
    else:
        console.print(f"hours at measured rates: extraction {rates.extract_flops_per_s / 1e9:,.1f} GFLOP/s from "
                      f"{rates.extract_source}; training {min(rates.train_flops_per_s.values()) / 1e9:,.0f}-"
                      f"{max(rates.train_flops_per_s.values()) / 1e9:,.0f} GFLOP/s by width from {rates.train_source};"
                      f" shuffle from {rates.shuffle_source}", highlight=False, soft_wrap=True)
    budget = cfg.storage.budget_bytes
    waves = Table(title=f"storage waves (budget {_bytes(budget) if budget else 'none: one wave'}"
                        f"{', activations kept' if cfg.storage.keep_activations else ''})", title_justify="left")
    for col in ("wave", "groups", "activations (extracted + shuffled)"):
        waves.add_column(col, justify="left" if col == "groups" else "right")
    for w in plan["waves"]:
        waves.add_row(str(w["wave"] + 1), describe_groups(w["groups"]), _bytes(w["bytes"]))
    console.print(waves)
    console.print(f"peak activation storage: {_bytes(plan['peak_storage'])}", highlight=False)
    return 0


def cmd_import(args) -> int:
    """Evaluate a published release (Gemma Scope's layout) on this suite's model and held-out tokens."""
    try:
        cfg = load_suite_config(args.config)
        if args.site not in TL_HOOKS:
            return fail(f"--site: unknown site {args.site!r} (one of {', '.join(TL_HOOKS)})")
        prepared = prepare_suite(cfg, args.config, write=False, need_write=True)
        hf_config = load_config(cfg.model)
        rows = import_release(cfg, args.release, args.site, args.name, prepared.root, site_width(hf_config, args.site),
                              n_layers(hf_config), prepared.model_name)
    except ConfigError as e:
        return fail(str(e))
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e).splitlines()[0])
    table = Table(title=f"'{args.name}' ({args.site}) on suite '{cfg.name}''s model and held-out tokens",
                  title_justify="left")
    for col in ("layer", "width", "average_l0 (release)", "L0", "FVU", "delta loss", "dead"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["layer"]), r["width_label"], str(r["average_l0_label"]), f"{r['l0']:.1f}",
                      f"{r['fvu']:.3f}", f"{r['delta_loss']:.4f}", f"{r['dead_frac']:.1%}")
    console.print(table)
    console.print(f"evaluations: {prepared.root.path(import_evals_dir(args.name, args.site))}", highlight=False,
                  soft_wrap=True)
    return 0


def _interrupt_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so `finally` blocks stop the servers this process started."""
    raise SystemExit(128 + signum)


def cmd_server(args) -> int:
    """The dashboard over the same database `scopeflow run` uses, until Ctrl-C or SIGTERM."""
    try:
        cfg = load_suite_config(args.config)
    except ConfigError as e:
        return fail(str(e))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    proc, api_url = start_server(Path(cfg.orchestration.prefect_home).resolve(), port=args.port)
    console.print(f"Prefect dashboard: {api_url[:-4]}  (API {api_url}); Ctrl-C stops it", highlight=False)
    console.print(f"runs use it with: export PREFECT_API_URL={api_url}", highlight=False)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scopeflow", description="Build and evaluate a Gemma Scope-style SAE suite.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suite; units already complete are skipped")
    run.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    run.set_defaults(fn=cmd_run)
    st = sub.add_parser("status", help="each stage's units: complete, failed, running, pending, durations")
    st.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    st.set_defaults(fn=cmd_status)
    rr = sub.add_parser("rerun", help="force a stage's units (and their dependents) to run again")
    rr.add_argument("config")
    rr.add_argument("--stage", required=True)
    rr.add_argument("--site")
    rr.add_argument("--layer", type=int)
    rr.add_argument("--wave", type=int, help="one storage wave's units (`scopeflow plan` lists the waves)")
    rr.add_argument("--shard", type=int, help="one extract shard (the unit named in a corrupt-chunk error; with "
                                              "storage waves, add its --wave)")
    rr.set_defaults(fn=cmd_rerun)
    pl = sub.add_parser("plan", help="units, bytes, objects, FLOPs and device-hours per stage, and storage waves")
    pl.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    pl.add_argument("--throughputs", default="benchmarks/results",
                    help="folder of measured rates: extract-DEVICE.json, train-DEVICE.json, shuffle-DEVICE.json")
    pl.add_argument("--device", default="cpu", help="which measurements to use (cpu, cuda, ...)")
    pl.set_defaults(fn=cmd_plan)
    rp = sub.add_parser("report", help="print the metrics table and where the report is")
    rp.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    rp.set_defaults(fn=cmd_report)
    im = sub.add_parser("import", help="evaluate a Gemma Scope release folder on this suite's model and eval tokens")
    im.add_argument("config")
    im.add_argument("release", help="folder of layer_{L}/width_{W}/average_l0_{N}/params.npz")
    im.add_argument("--site", required=True, help="the site the release was trained on: res, att or mlp")
    im.add_argument("--name", default="gemma-scope", help="a name for the release (its folder under imports/)")
    im.set_defaults(fn=cmd_import)
    sv = sub.add_parser("server", help="start the Prefect server and dashboard on the run database")
    sv.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    sv.add_argument("--port", type=int, default=4200)
    sv.set_defaults(fn=cmd_server)
    add_latents_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = args.fn(args)
    if argv is None:
        # The command line's process ends now. Python's last garbage collection at exit would walk every
        # object Prefect, Ray and torch made (3-5 s measured here, most of the 10 s a stopped run has to exit
        # in) to free what the OS frees anyway; frozen objects are skipped. (Callers passing argv, the tests,
        # keep collecting.)
        gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(main())
