"""index.html: the suite's facts, headline numbers per site, the figures and a sortable table of every SAE,
in one self-contained file."""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import Any

from .formatting import (HTML_EXTRA_SPEC, NA, TABLE_SPEC, arch_display_name, arch_sparsity_symbol,
                         architectures_in, as_float, finite_floats, fmt_count, fmt_fixed, fmt_g, fmt_int, fmt_pct,
                         format_table_rows, is_missing, sites_in, unique_numbers)
from .findings import findings
from .palette import site_colors
from .plots import SECTIONS, ReportData
from .plots.splitting import SPLIT_COSINE, SPLITTING_FILE, split_examples
from .plots.transfer import TRANSFER_FILE, transfer_means
from .schema import JUMPRELU, jumprelu_rows, plain

_ASSETS = resources.files(__package__) / "assets"
#: the report's style, which the latent browser shares
REPORT_CSS = (_ASSETS / "report.css").read_text(encoding="utf-8")
_JS = (_ASSETS / "sortable.js").read_text(encoding="utf-8")

# Good -> middle -> bad, light enough that dark text stays readable on every cell.
_SCALE_STOPS = ((0xC6, 0xEB, 0xD0), (0xFD, 0xF0, 0xBF), (0xF7, 0xBD, 0xB6))


def _scale_color(t: float) -> str:
    """A cell's background for its rank t in [0, 1], interpolated through `_SCALE_STOPS`."""
    t = min(1.0, max(0.0, t))
    seg = 0 if t <= 0.5 else 1
    u = t * 2 if seg == 0 else (t - 0.5) * 2
    a, b = _SCALE_STOPS[seg], _SCALE_STOPS[seg + 1]
    r, g, bl = (round(a[k] + (b[k] - a[k]) * u) for k in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def _rank_positions(values: Sequence[float]) -> list[float | None]:
    """Rank within the column, in [0, 1]: robust to the few-orders-of-magnitude spread across layers and lambdas."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return [None] * len(values)
    if len(finite) == 1 or finite[0] == finite[-1]:
        return [0.0 if math.isfinite(v) else None for v in values]
    index: dict[float, list[int]] = defaultdict(list)
    for i, v in enumerate(finite):
        index[v].append(i)
    denom = len(finite) - 1
    return [(sum(index[v]) / len(index[v]) / denom) if math.isfinite(v) else None for v in values]


def _sort_value(value: Any, numeric: bool) -> str:
    """The data-v the page's script sorts on: full-precision numbers (the cell text is rounded), '' for missing."""
    if numeric:
        f = as_float(value)
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"  # what JavaScript's Number() parses back
        return "" if math.isnan(f) else repr(f)
    return "" if is_missing(value) else str(value)


def _info_value(value: Any) -> str:
    """A suite_info value as HTML: whatever the caller passes (str, list, number, dict) reads as plain text."""
    value = plain(value)
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        text = ", ".join(fmt_g(v) if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, float):
        text = fmt_g(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    else:
        text = json.dumps(value, default=str, sort_keys=True)
    escaped = html.escape(text)
    # Hashes and paths read better in monospace; ordinary words do not.
    looks_code = (" " not in text and len(text) >= 12) or isinstance(value, dict)
    return f"<code>{escaped}</code>" if looks_code else escaped


def _sae_label(row: dict) -> str:
    """Which SAE a headline number belongs to, short enough for a card; JumpReLU, the suite's own, goes unnamed."""
    arch = row.get("architecture", JUMPRELU)
    sparsity = arch_sparsity_symbol(arch) + fmt_g(row.get("sparsity"))
    prefix = "" if arch == JUMPRELU else f"{arch_display_name(arch)} · "
    return f"{prefix}L{fmt_int(row.get('layer'))} · w{fmt_int(row.get('width'))} · {sparsity}"


def _headline_cards(rows: list[dict]) -> str:
    """Best, worst and mean per site (and over all sites), the numbers a reader compares first."""
    if not rows:
        return '<div class="empty">No evaluated SAEs.</div>'
    sites = sites_in(rows)
    colors = site_colors(sites)
    fmt_dl, fmt_l0, fmt_fvu, fmt_dead = fmt_fixed(4), fmt_fixed(1), fmt_fixed(3), fmt_pct(1)
    cards = []
    groups = [("all sites", rows, "#4b5563")] if len(sites) > 1 else []
    groups += [(s, [r for r in rows if str(r.get("site")) == s], colors[s]) for s in sites]
    for name, rs, color in groups:
        with_dl = [r for r in rs if math.isfinite(as_float(r.get("delta_loss")))]
        best = min(with_dl, key=lambda r: as_float(r["delta_loss"])) if with_dl else None
        worst = max(with_dl, key=lambda r: as_float(r["delta_loss"])) if with_dl else None

        def mean(key: str) -> float:
            vals = finite_floats(r.get(key) for r in rs)
            return sum(vals) / len(vals) if vals else math.nan

        def sae(r: dict | None) -> str:
            if r is None:
                return ""
            prefix = f"{r.get('site')} " if name == "all sites" else ""
            return f"<small>{html.escape(prefix + _sae_label(r))}</small>"

        items = [
            ("best delta loss", (fmt_dl(best["delta_loss"]) if best else NA) + sae(best)),
            ("worst delta loss", (fmt_dl(worst["delta_loss"]) if worst else NA) + sae(worst)),
            ("mean L0", fmt_l0(mean("l0"))),
            ("mean FVU", fmt_fvu(mean("fvu"))),
            ("mean dead", fmt_dead(mean("dead_frac"))),
        ]
        kv = "".join(f'<div class="k">{k}</div><div class="v">{v}</div>' for k, v in items)
        cards.append(f'<div class="card" style="--site:{color}"><h3>{html.escape(name)}'
                     f'<span>{len(rs)} SAE{"s" if len(rs) != 1 else ""}</span></h3>'
                     f'<div class="kv">{kv}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _info_block(rows: list[dict], suite_info: dict) -> str:
    """The caller's suite facts, then what the rows themselves say; a fact the caller gave is not repeated."""
    items = [(str(k), _info_value(v)) for k, v in suite_info.items()]
    derived = [
        ("SAEs in report", f"{len(rows):,}"),
        ("sites", ", ".join(sites_in(rows)) or NA),
        ("layers", ", ".join(fmt_int(v) for v in unique_numbers(r.get("layer") for r in rows)) or NA),
        ("widths", ", ".join(fmt_int(v) for v in unique_numbers(r.get("width") for r in rows)) or NA),
        ("lambdas", ", ".join(fmt_g(v) for v in unique_numbers(r.get("lambda") for r in jumprelu_rows(rows)))
         or NA),
        ("architectures", ", ".join(arch_display_name(a) for a in architectures_in(rows)) or NA),
    ]
    eval_tokens = finite_floats(r.get("n_tokens") for r in rows)
    if eval_tokens:
        derived.append(("eval tokens / SAE", fmt_count(max(eval_tokens))))
    have = {k for k, _ in items}
    items += [(k, html.escape(v)) for k, v in derived if k not in have]
    cells = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    return f'<dl class="info">{cells}</dl>'


def _metrics_html_table(rows: list[dict]) -> str:
    """The terminal table's cells (`format_table_rows`), plus the extra columns any row has, sortable in place."""
    if not rows:
        return '<div class="tablewrap"><div class="empty">No evaluated SAEs.</div></div>'
    columns = list(TABLE_SPEC) + [c for c in HTML_EXTRA_SPEC if any(c.key in r for r in rows)]
    base_cells = format_table_rows(rows)
    scales = {c.key: _rank_positions([as_float(r.get(c.key)) for r in rows]) for c in columns if c.scaled}
    head = "".join(
        f'<th class="{"num" if c.numeric else ""}" title="click to sort">{html.escape(c.header)}</th>'
        for c in columns)
    body = []
    for i, (row, cells) in enumerate(zip(rows, base_cells)):
        tds = []
        for j, col in enumerate(columns):
            text = cells[j] if j < len(cells) else col.fmt(row.get(col.key))
            classes = [cls for cls in ("num" if col.numeric else "", col.css, "na" if text == NA else "") if cls]
            style = ""
            if col.key in scales and scales[col.key][i] is not None:
                classes.append("scaled")
                style = f' style="background:{_scale_color(scales[col.key][i])}"'
            title = f' title="{html.escape(text)}"' if col.css == "path" else ""
            tds.append(f'<td class="{" ".join(classes)}" data-v="{html.escape(_sort_value(row.get(col.key), col.numeric))}"'
                       f'{style}{title}>{html.escape(text)}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (f'<div class="tablewrap"><table class="sortable" id="metrics"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _findings_list(rows: list[dict]) -> str:
    """Gemma Scope's findings as this suite's numbers show them, each with where it does not hold."""
    items = []
    for f in findings(rows):
        exceptions = "".join(f"<li>{html.escape(e)}</li>" for e in f.exceptions)
        items.append(f'<li class="{"ok" if f.holds else "no"}"><b>{html.escape(f.claim)}</b>: holds at '
                     f"{f.held} of {f.of}" + (f"<ul>{exceptions}</ul>" if exceptions else "") + "</li>")
    if not items:
        return ""
    return ("<h2>Gemma Scope's findings on this suite</h2>"
            f'<ul class="findings">{"".join(items)}</ul>')


def _figure(name: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}" loading="lazy">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def _figures(data: ReportData) -> str:
    """The figures `render_report` drew, under their registry headings; a heading with none to show is left out."""
    parts = []
    for section in SECTIONS:
        shown = section.shown(data)
        if not shown:
            continue
        figures = "".join(_figure(p.file, p.caption) for p in shown)
        parts.append(f"<h2>{html.escape(section.heading)}</h2>"
                     + (f'<div class="grid2">{figures}</div>' if section.grid else figures))
        if any(p.file == SPLITTING_FILE for p in shown):  # its examples, linked into the latent browser
            parts.append(_splitting_examples(data))
        if any(p.file == TRANSFER_FILE for p in shown):
            parts.append(_transfer_table(data))
    return "".join(parts)


def _transfer_table(data: ReportData) -> str:
    """The transfer figure's numbers: per (site, layer), each model's mean delta loss and FVU."""
    models, table = transfer_means(data.rows, data.transfer)
    head = "".join(f"<th>{html.escape(label)} {html.escape(m)}</th>"
                   for label in ("delta loss,", "FVU,") for m in models)
    body = "".join(
        f"<tr><td>{html.escape(r['site'])}</td><td>{r['layer']}</td>"
        + "".join(f"<td>{r[(metric, m)]:.4f}</td>" for metric in ("delta_loss", "fvu") for m in models) + "</tr>"
        for r in table)
    return (f"<p>Means over the SAEs of each (site, layer):</p><div class=\"tablewrap\"><table class=\"transfer\"><thead><tr><th>site</th>"
            f"<th>layer</th>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _latent_link(site: str, layer: int, width: int, setting: str, latent: int) -> str:
    key = f"{site}/layer_{layer}/width_{width}/{setting}"
    return f'<a href="latents.html#sae={html.escape(key)}&amp;latent={latent}">{latent}</a>'


def _splitting_examples(data: ReportData) -> str:
    """The narrow latents that split most, each linked into the latent browser with its close wide latents."""
    examples = split_examples(data.splitting)
    if not examples:
        return ""
    items = []
    for e in examples:
        s, layer, setting = e["site"], e["layer"], e["setting"]
        wide = ", ".join(f"{_latent_link(s, layer, e['wide_width'], setting, w)} ({c:.2f})" for w, c in e["wide"])
        items.append(f"<li>{html.escape(s)} layer {layer}, {html.escape(setting)}: latent "
                     f"{_latent_link(s, layer, e['narrow_width'], setting, e['narrow_latent'])} of width "
                     f"{e['narrow_width']} has {len(e['wide'])} latents of width {e['wide_width']} at cosine "
                     f"&ge; {SPLIT_COSINE}: {wide}</li>")
    return ("<p>Narrow latents that split most (links open their top contexts in the latent browser):</p>"
            f"<ul>{''.join(items)}</ul>")


def index_html(data: ReportData, title: str, suite_info: dict) -> str:
    """The whole page, with its style and script inline so the report folder opens anywhere without a server."""
    rows = data.rows
    legend = ('<p class="legend">Click a column header to sort. FVU and delta loss cells are coloured by rank '
              'within the column: lower <span class="swatch"></span> higher.</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
{REPORT_CSS}</style>
</head>
<body>
<main>
<h1>{html.escape(title)}</h1>
<div class="sub">JumpReLU SAE suite report</div>
{_info_block(rows, suite_info)}
<h2>Headline numbers</h2>
{_headline_cards(rows)}
{_findings_list(rows)}
{_figures(data)}
<h2>All SAEs</h2>
{legend}
{_metrics_html_table(rows)}
<p><a href="latents.html">The latent browser</a>: every inspected SAE's latents, their top contexts and
output tokens.</p>
</main>
<script>
{_JS}</script>
</body>
</html>
"""

