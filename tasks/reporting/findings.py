"""Gemma Scope's findings that a suite's own evaluation rows can show, checked per (site, layer):

- widths: the wider SAE's L0-FVU curve lies below the narrower's where their L0 ranges overlap (each curve
  linear between its sparsity settings), or, without overlap, at the nearest pair of points;
- sparsity: L0 falls as the sparsity coefficient rises, for every width;
- sites: the residual stream's delta loss exceeds the MLP's and the attention output's (same width and
  setting, at that layer).

The report states each as "holds at n of m" with the cells where it does not, so a suite that contradicts
the paper says so on its first page; `benchmarks/tiny_findings.py` prints the same from a run's evals/.
Only JumpReLU rows of the suite's own model are read (baselines and transfer rows answer other questions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .formatting import as_float
from .schema import jumprelu_rows


@dataclass(frozen=True)
class Finding:
    """One finding: what it says, at how many of the places it applies it holds, and where it does not."""

    claim: str
    held: int
    of: int
    exceptions: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return self.of > 0 and self.held == self.of


def _curve(points: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((as_float(p["l0"]), as_float(p["fvu"])) for p in points)
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def wider_below(narrow: list[dict], wide: list[dict]) -> dict:
    """Whether the wide SAEs' L0-FVU curve lies below the narrow ones', and by how much at worst."""
    (nl, nf), (wl, wf) = _curve(narrow), _curve(wide)
    lo, hi = max(nl[0], wl[0]), min(nl[-1], wl[-1])
    if lo <= hi:
        at = np.linspace(lo, hi, 9)
        gap = np.interp(at, wl, wf) - np.interp(at, nl, nf)
        return {"holds": bool((gap < 0).all()), "overlap": [float(lo), float(hi)], "max_gap": float(gap.max())}
    i, j = np.unravel_index(np.abs(nl[:, None] - wl[None, :]).argmin(), (len(nl), len(wl)))
    return {"holds": bool(wf[j] < nf[i]), "overlap": None,
            "nearest": [[float(nl[i]), float(nf[i])], [float(wl[j]), float(wf[j])]]}


def _base_rows(rows: list[dict]) -> list[dict]:
    return [r for r in jumprelu_rows(rows) if r.get("model", "base") in (None, "base")
            and all(math.isfinite(as_float(r.get(k))) for k in ("l0", "fvu"))]


def _groups(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((str(r["site"]), int(r["layer"])), []).append(r)
    return dict(sorted(groups.items()))


def _by_width(rs: list[dict]) -> dict[int, list[dict]]:
    """A group's rows per width, narrowest first, only widths with a curve (two settings or more)."""
    by_width = {w: [r for r in rs if int(r["width"]) == w] for w in sorted({int(r["width"]) for r in rs})}
    return {w: ws for w, ws in by_width.items() if len(ws) >= 2}


def _width_checks(groups: dict[tuple[str, int], list[dict]]) -> dict[str, list[dict]]:
    out = {}
    for (site, layer), rs in groups.items():
        curves = _by_width(rs)
        widths = list(curves)
        if len(widths) >= 2:
            out[f"{site}/layer_{layer}"] = [dict(wider_below(curves[a], curves[b]), narrow=a, wide=b)
                                            for a, b in zip(widths, widths[1:])]
    return out


def width_checks(rows: list[dict]) -> dict[str, list[dict]]:
    """Per "site/layer_L", each pair of neighbouring widths' `wider_below` (pairs need two settings each)."""
    return _width_checks(_groups(_base_rows(rows)))


def _widths_finding(groups: dict[tuple[str, int], list[dict]]) -> Finding | None:
    checks = _width_checks(groups)
    if not checks:
        return None
    bad = [f"{key}: width {c['wide']} above {c['narrow']}"
           + (f" (FVU +{c['max_gap']:.3f} at worst over L0 {c['overlap'][0]:.1f}-{c['overlap'][1]:.1f})"
              if c["overlap"] else "")
           for key, cs in checks.items() for c in cs if not c["holds"]]
    held = sum(all(c["holds"] for c in cs) for cs in checks.values())
    return Finding("The wider SAE reaches a lower FVU at comparable L0 (its L0-FVU curve lies below)",
                   held, len(checks), bad)


def _sparsity_finding(groups: dict[tuple[str, int], list[dict]]) -> Finding | None:
    falls, bad, tested = 0, [], 0
    for (site, layer), rs in groups.items():
        curves = [sorted(ws, key=lambda r: as_float(r["sparsity"])) for ws in _by_width(rs).values()]
        if not curves:
            continue
        tested += 1
        if all(np.all(np.diff([as_float(r["l0"]) for r in ws]) < 0) for ws in curves):
            falls += 1
        else:
            bad.append(f"{site}/layer_{layer}")
    return Finding("L0 falls as λ rises, at every width", falls, tested, bad) if tested else None


def _sites_finding(rows: list[dict]) -> Finding | None:
    by_layer: dict[int, dict] = {}
    for r in rows:
        if math.isfinite(as_float(r.get("delta_loss"))):
            by_layer.setdefault(int(r["layer"]), {})[(r["site"], r["width"], as_float(r["sparsity"]))] = \
                as_float(r["delta_loss"])
    held, bad, tested = 0, [], 0
    for layer, at in sorted(by_layer.items()):
        pairs = [(k, o) for k in at if k[0] == "res" for o in ("mlp", "att") if (o, k[1], k[2]) in at]
        if not pairs:
            continue
        tested += 1
        if all(at[k] > at[(o, k[1], k[2])] for k, o in pairs):
            held += 1
        else:
            bad.append(f"layer {layer}")
    if not tested:
        return None
    return Finding("Residual-stream delta loss exceeds the MLP's and the attention output's (same width, λ)",
                   held, tested, bad)


def findings(rows: list[dict]) -> list[Finding]:
    """The findings this suite's rows can test (one it cannot, e.g. with one width, is left out)."""
    base = _base_rows(rows)
    groups = _groups(base)
    found = (_widths_finding(groups), _sparsity_finding(groups), _sites_finding(base))
    return [f for f in found if f is not None]
