"""How the report writes and orders things: one definition of each metric's cell text, shared by the CLI's
terminal table, the Prefect table artifact and the HTML table, so a number reads the same wherever a
researcher sees it; and the suite order every table and legend lists SAEs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sae.registry import ARCHITECTURES, architecture_class

from .schema import JUMPRELU

NA = "n/a"


def is_missing(value: Any) -> bool:
    """None or a float NaN: what a table shows as n/a whatever the column's type."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def as_float(value: Any) -> float:
    """NaN for anything that is not a number, so plots and summaries can skip it uniformly."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt_str(value: Any) -> str:
    return NA if is_missing(value) else str(value)


def fmt_int(value: Any) -> str:
    f = as_float(value)
    return NA if math.isnan(f) else str(int(round(f)))


def fmt_g(value: Any) -> str:
    f = as_float(value)
    return NA if math.isnan(f) else f"{f:g}"


def fmt_fixed(decimals: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        f = as_float(value)
        if math.isnan(f):
            return NA
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f"{f:.{decimals}f}"

    return fmt


def fmt_pct(decimals: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        f = as_float(value)
        return NA if math.isnan(f) else f"{100.0 * f:.{decimals}f}%"

    return fmt


def fmt_count(value: Any) -> str:
    """Token counts span k to T; three significant digits and a suffix keep the column narrow."""
    f = as_float(value)
    if math.isnan(f):
        return NA
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(f) >= scale:
            return f"{f / scale:.3g}{suffix}"
    return str(int(round(f)))


@dataclass(frozen=True)
class Column:
    """A table column: its header, the row key it reads, how it is written, and whether it gets a colour scale."""

    header: str
    key: str
    fmt: Callable[[Any], str]
    scaled: bool = False
    numeric: bool = True
    css: str = ""


TABLE_SPEC: tuple[Column, ...] = (
    Column("site", "site", fmt_str, numeric=False),
    Column("layer", "layer", fmt_int),
    Column("arch", "architecture", fmt_str, numeric=False),
    Column("width", "width", fmt_int),
    Column("sparsity", "sparsity", fmt_g),
    Column("L0", "l0", fmt_fixed(1)),
    Column("FVU", "fvu", fmt_fixed(3), scaled=True),
    Column("delta loss", "delta_loss", fmt_fixed(4), scaled=True),
)

# Extra detail only the HTML table has room for; the terminal table stays at the eight columns above.
HTML_EXTRA_SPEC: tuple[Column, ...] = (
    Column("dead", "dead_frac", fmt_pct(1)),
    Column("dense", "dense_frac", fmt_pct(2)),
    Column("clean CE", "clean_loss", fmt_fixed(4)),
    Column("spliced CE", "spliced_loss", fmt_fixed(4)),
    Column("train tokens", "train_tokens", fmt_count),
    Column("SAE path", "sae_path", fmt_str, numeric=False, css="path"),
)

TABLE_COLUMNS: tuple[str, ...] = tuple(c.header for c in TABLE_SPEC)


def format_table_rows(rows: Iterable[dict]) -> list[list[str]]:
    """Cells for `TABLE_COLUMNS`, in the order the rows are given (use `sorted_rows` for suite order)."""
    return [[col.fmt(row.get(col.key)) for col in TABLE_SPEC] for row in rows]


# ---- ordering -------------------------------------------------------------------------------------------

SITE_ORDER = ("res", "att", "mlp")


def site_key(site: Any) -> tuple[int, str]:
    """Known sites in residual, attention, MLP order; any other site after them, alphabetically."""
    s = str(site)
    return (SITE_ORDER.index(s), s) if s in SITE_ORDER else (len(SITE_ORDER), s)


def num_key(value: Any) -> tuple[int, float]:
    """Numbers ascending, missing ones last."""
    f = as_float(value)
    return (1, 0.0) if math.isnan(f) else (0, f)


def arch_rank(arch: Any) -> int:
    """Position in `sae.registry.ARCHITECTURES`, the order the report lists architectures in; an architecture
    the registry does not know raises ValueError rather than being drawn as a stranger."""
    return list(ARCHITECTURES).index(architecture_class(str(arch)).architecture)


def arch_display_name(arch: Any) -> str:
    return architecture_class(str(arch)).display_name


def arch_sparsity_symbol(arch: Any) -> str:
    return architecture_class(str(arch)).sparsity_symbol


def sorted_rows(rows: Iterable[dict]) -> list[dict]:
    """Suite order (site, layer, architecture, width, sparsity), so every table lists SAEs the same way."""
    return sorted(rows, key=lambda r: (site_key(r.get("site")), num_key(r.get("layer")),
                                       arch_rank(r.get("architecture", JUMPRELU)),
                                       num_key(r.get("width")), num_key(r.get("sparsity", r.get("lambda")))))


def architectures_in(rows: Iterable[dict]) -> list[str]:
    """The architectures present, in registry order."""
    return sorted({str(r.get("architecture")) for r in rows}, key=arch_rank)


def sites_in(rows: Iterable[dict]) -> list[str]:
    """The sites present, in suite order."""
    return sorted({str(r.get("site")) for r in rows}, key=site_key)


def unique_numbers(values: Iterable[Any]) -> list[float]:
    """The distinct numbers among the values, ascending, missing ones dropped."""
    return sorted({f for f in (as_float(v) for v in values) if not math.isnan(f)})


def finite_floats(values: Iterable[Any]) -> list[float]:
    """The finite numbers among the values, in their order."""
    return [f for f in (as_float(v) for v in values) if math.isfinite(f)]
