"""Does a run's report show what Gemma Scope shows? From its evals/ alone, per (site, layer):

- widths: the wider SAE's L0-FVU curve lies below the narrower's where their L0 ranges overlap (each curve
  linear between its sparsity settings), or, without overlap, at the nearest pair of points;
- sparsity: L0 falls as the sparsity coefficient rises, for every width;
- sites: the residual stream's delta loss exceeds the MLP's and the attention output's (same width and
  setting, at that layer).

    .venv/bin/python benchmarks/tiny_findings.py runs/tiny [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def read_evals(run: Path) -> list[dict]:
    """The JumpReLU rows on the suite's own model (`model` "base"; files from before `evaluate.models` have
    no such column)."""
    rows = []
    for f in sorted((run / "evals").glob("*/layer_*.parquet")):
        rows += pq.read_table(f).select(
            [c for c in ("site", "layer", "model", "architecture", "width", "sparsity", "l0", "fvu", "delta_loss")
             if c in pq.read_schema(f).names]).to_pylist()
    return [r for r in rows if r["architecture"] == "jumprelu" and r.get("model", "base") == "base"]


def curve(points: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((p["l0"], p["fvu"]) for p in points)
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def wider_below(narrow: list[dict], wide: list[dict]) -> dict:
    (nl, nf), (wl, wf) = curve(narrow), curve(wide)
    lo, hi = max(nl[0], wl[0]), min(nl[-1], wl[-1])
    if lo <= hi:
        at = np.linspace(lo, hi, 9)
        gap = np.interp(at, wl, wf) - np.interp(at, nl, nf)
        return {"holds": bool((gap < 0).all()), "overlap": [float(lo), float(hi)], "max_gap": float(gap.max())}
    i, j = np.unravel_index(np.abs(nl[:, None] - wl[None, :]).argmin(), (len(nl), len(wl)))
    return {"holds": bool(wf[j] < nf[i]), "overlap": None, "nearest": [[float(nl[i]), float(nf[i])],
                                                                        [float(wl[j]), float(wf[j])]]}


def findings(rows: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["site"], r["layer"]), []).append(r)
    out = {"widths": {}, "sparsity": {}, "sites": {}}
    for (site, layer), rs in sorted(groups.items()):
        key = f"{site}/layer_{layer}"
        by_width = {w: [r for r in rs if r["width"] == w] for w in sorted({r["width"] for r in rs})}
        widths = sorted(by_width)
        out["widths"][key] = [dict(wider_below(by_width[a], by_width[b]), narrow=a, wide=b)
                              for a, b in zip(widths, widths[1:])]
        out["sparsity"][key] = all(np.all(np.diff([r["l0"] for r in sorted(ws, key=lambda r: r["sparsity"])]) < 0)
                                   for ws in by_width.values())
    for layer in sorted({r["layer"] for r in rows}):
        at = {(r["site"], r["width"], r["sparsity"]): r["delta_loss"] for r in rows if r["layer"] == layer}
        pairs = [(k[1], k[2]) for k in at if k[0] == "res"]
        out["sites"][f"layer_{layer}"] = all(at[("res", w, s)] > at.get((o, w, s), -np.inf)
                                             for w, s in pairs for o in ("mlp", "att"))
    out["summary"] = {"widths": sum(all(c["holds"] for c in v) for v in out["widths"].values()),
                      "sparsity": sum(out["sparsity"].values()), "sites": sum(out["sites"].values()),
                      "site_layers": len(out["widths"]), "layers": len(out["sites"])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a local run folder")
    p.add_argument("--json", type=Path, help="write the findings here too")
    args = p.parse_args()
    out = findings(read_evals(args.run))
    s = out["summary"]
    print(f"wider below narrower at comparable L0: {s['widths']} of {s['site_layers']} (site, layer)s")
    print(f"L0 falls as the coefficient rises:    {s['sparsity']} of {s['site_layers']}")
    print(f"residual delta loss > MLP and attn:   {s['sites']} of {s['layers']} layers")
    for key, checks in out["widths"].items():
        for c in checks:
            if not c["holds"]:
                print(f"  {key}: width {c['wide']} not below {c['narrow']}: "
                      + (f"max FVU gap +{c['max_gap']:.3f} over L0 {c['overlap'][0]:.1f}-{c['overlap'][1]:.1f}"
                         if c["overlap"] else f"nearest points {c['nearest']}"))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
