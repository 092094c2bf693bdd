"""The report renders from synthetic evaluation rows alone, for full suites and degenerate ones alike."""

from __future__ import annotations

import html
import math
import pathlib
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.reporting import PLOT_FILES, TABLE_COLUMNS, format_table_rows, render_report, sorted_rows
from tasks.reporting.plots import PLOTS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EDGES = [float(x) for x in np.arange(-8.0, 0.5, 0.5)]  # log10 firing frequency, 16 bins


def synthetic_suite(sites=("res", "att", "mlp"), layers=(0, 3, 6, 9), widths=(1024, 4096),
                    lambdas=(0.0003, 0.001), seed: int = 0, log_points: int = 30):
    """Rows shaped like the evaluate stage's output, with trends a real suite shows (deeper = worse, etc.)."""
    rng = np.random.default_rng(seed)
    rows, logs = [], []
    site_scale = {"res": 1.0, "att": 0.5, "mlp": 0.8}
    site_l0 = {"res": 1.0, "att": 0.6, "mlp": 1.4}
    site_fvu = {"res": 1.0, "att": 1.7, "mlp": 1.3}
    for site in sites:
        for layer in layers:
            for width in widths:
                for lam in lambdas:
                    l0 = site_l0[site] * 60.0 * (0.001 / lam) ** 0.6 * (1 + 0.05 * layer) * (4096 / width) ** 0.1
                    fvu = min(0.9, site_fvu[site] * 0.04 * (1 + 0.15 * layer) * (80 / l0) ** 0.5 * (4096 / width) ** 0.2)
                    dl = site_scale[site] * 0.02 * (1 + 0.3 * layer) * (80 / l0) ** 0.7 * (4096 / width) ** 0.3
                    centre = -2.5 - 0.3 * math.log10(lam / 0.001)
                    mids = np.array(EDGES[:-1]) + 0.25
                    hist = np.round(width * np.exp(-0.5 * ((mids - centre) / 0.8) ** 2) / 2.0).astype(int)
                    n_dead = int(rng.integers(0, width // 50))
                    n_dense = int(rng.integers(0, 4))
                    rows.append({
                        "site": site, "layer": layer, "width": width, "lambda": lam, "sparsity": lam,
                        "architecture": "jumprelu", "d_in": 512,
                        "l0": float(l0), "fvu": float(fvu), "mse": float(fvu * 3.1),
                        "delta_loss": float(dl), "clean_loss": 3.21, "spliced_loss": 3.21 + float(dl),
                        "dead_frac": n_dead / width, "dense_frac": n_dense / width,
                        "n_dead": n_dead, "n_dense": n_dense, "n_tokens": 409_600,
                        "freq_hist": hist.tolist(), "freq_hist_edges": EDGES,
                        "train_steps": 2000, "train_tokens": 8_192_000,
                        "sae_path": f"saes/{site}/layer_{layer}/width_{width}/lambda_{lam:g}",
                    })
                    for i in range(log_points):
                        step = (i + 1) * 2000 // log_points
                        frac = (i + 1) / log_points
                        logs.append({
                            "site": site, "layer": layer, "width": width, "sparsity": lam,
                            "architecture": "jumprelu", "step": step,
                            "tokens": step * 4096, "loss": float(1.5 * math.exp(-4 * frac) + fvu + rng.normal(0, 0.01)),
                            "mse": float(fvu * 3 + math.exp(-4 * frac)), "l0": float(l0 * (1 + 20 * math.exp(-6 * frac))),
                            "fvu_batch": float(fvu + 0.5 * math.exp(-4 * frac)), "dead_frac": n_dead / width,
                            "lambda_t": lam * min(1.0, frac * 5), "lr": 7e-5,
                        })
    return rows, logs


SUITE_INFO = {"model": "google/gemma-2-2b", "n SAEs": 48, "train tokens": 8_192_000,
              "fingerprint": "3f9a1c2e7b5d4e60a1b2", "sites": ["res", "att", "mlp"]}


def _check_outputs(paths: list[pathlib.Path], out: pathlib.Path, n_rows: int, row_columns: list[str]) -> str:
    names = {p.name for p in paths}
    assert names == {"metrics.parquet", "index.html", *PLOT_FILES}
    for p in paths:
        assert p.parent == out and p.is_file() and p.stat().st_size > 0, p
    for name in PLOT_FILES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name

    table = pq.read_table(out / "metrics.parquet")
    assert table.num_rows == n_rows
    assert set(table.column_names) == set(row_columns)

    page = (out / "index.html").read_text(encoding="utf-8")
    for name in PLOT_FILES:
        assert f'src="{name}"' in page, name
    assert not re.search(r"""(src|href)=["']https?://""", page), "page must not load external resources"
    return page


def _body_rows(page: str) -> list[str]:
    tbody = page.split('<table class="sortable" id="metrics">', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", tbody)


# Each distinct input is rendered once per module (a render of the full suite is ~3 CPU-s here) and the tests
# that read the same page share it.
@pytest.fixture(scope="module")
def full_suite(tmp_path_factory):
    """The full synthetic suite: JumpReLU only, no splitting or transfer rows."""
    rows, logs = synthetic_suite()
    out = tmp_path_factory.mktemp("full")
    return rows, out, render_report(rows, logs, out, title="Test suite", suite_info=SUITE_INFO)


@pytest.fixture(scope="module")
def one_row(tmp_path_factory):
    rows, logs = synthetic_suite(sites=("mlp",), layers=(5,), widths=(2048,), lambdas=(0.001,))
    out = tmp_path_factory.mktemp("one-row")
    return rows, out, render_report(rows, logs, out / "report", title="tiny", suite_info={"model": "m"})


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_full_suite(full_suite):
    rows, out, paths = full_suite
    assert len(rows) == 3 * 4 * 2 * 2
    page = _check_outputs(paths, out, len(rows), list(rows[0]))

    table = pq.read_table(out / "metrics.parquet").to_pylist()
    by_path = {r["sae_path"]: r for r in table}
    for r in rows:
        got = by_path[r["sae_path"]]
        assert got["freq_hist"] == r["freq_hist"]
        assert got["freq_hist_edges"] == pytest.approx(r["freq_hist_edges"])
        assert got["delta_loss"] == pytest.approx(r["delta_loss"])

    body = _body_rows(page)
    assert len(body) == len(rows)
    for r in rows:
        assert f">{r['sae_path']}<" in page
    assert "<title>Test suite</title>" in page
    assert "3f9a1c2e7b5d4e60a1b2" in page and "google/gemma-2-2b" in page
    for header in TABLE_COLUMNS:
        assert f">{header}</th>" in page


def test_a_suite_without_baselines_splitting_or_transfer_has_none_of_their_sections(full_suite):
    _, out, paths = full_suite
    assert not (out / "architectures_l0_vs_fidelity.png").exists()
    assert "architectures_l0_vs_fidelity.png" not in {p.name for p in paths}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Feature splitting" not in page  # no splitting rows
    assert "transfer" not in page.lower()  # no further model's rows


def test_the_page_says_where_gemma_scopes_findings_hold_and_where_not(full_suite, tmp_path):
    _, out, _ = full_suite  # shaped like the paper: wider is better, res costs the most
    text = _text((out / "index.html").read_text())
    assert "lies below): holds at 12 of 12" in text
    assert "L0 falls as λ rises, at every width: holds at 12 of 12" in text
    assert "attention output's (same width, λ): holds at 4 of 4" in text

    rows, logs = synthetic_suite()
    for r in rows:  # res layer 3's wide SAEs get worse, and mlp layer 6 costs more loss than res
        if (r["site"], r["layer"], r["width"]) == ("res", 3, 4096):
            r["fvu"] += 0.2
        if (r["site"], r["layer"]) == ("mlp", 6):
            r["delta_loss"] += 1.0
    render_report(rows, logs, tmp_path / "b", title="t", suite_info={})
    text = _text((tmp_path / "b" / "index.html").read_text())
    assert "lies below): holds at 11 of 12" in text
    raw = (tmp_path / "b" / "index.html").read_text()
    assert '<li class="no"><b>The wider SAE' in raw and '<li class="ok"><b>L0 falls' in raw  # marked ✗ and ✓
    assert re.search(r"res/layer_3: width 4096 above 1024 \(FVU \+0\.\d{3} at worst over L0 [\d.]+-[\d.]+\)", text)
    assert "(same width, λ): holds at 3 of 4layer 6" in text


def test_html_table_uses_shared_formatting(one_row):
    rows, out, _ = one_row
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    cells = format_table_rows(rows)[0]
    body = _body_rows(page)[0]
    texts = re.findall(r"<td[^>]*>([^<]*)</td>", body)
    assert texts[: len(TABLE_COLUMNS)] == cells


def test_format_table_rows():
    row = {"site": "res", "layer": 12, "architecture": "jumprelu", "width": 16384, "sparsity": 0.0006,
           "l0": 71.234, "fvu": 0.123456, "delta_loss": 0.0412345}
    assert TABLE_COLUMNS == ("site", "layer", "arch", "width", "sparsity", "L0", "FVU", "delta loss")
    assert format_table_rows([row]) == [["res", "12", "jumprelu", "16384", "0.0006", "71.2", "0.123", "0.0412"]]
    missing = {"site": "att", "layer": 1, "architecture": "topk", "width": 8, "sparsity": 32, "l0": float("nan"),
               "fvu": None, "delta_loss": np.float32("nan")}
    assert format_table_rows([missing]) == [["att", "1", "topk", "8", "32", "n/a", "n/a", "n/a"]]
    assert format_table_rows([]) == []


def test_sorted_rows_suite_order():
    rows, _ = synthetic_suite(log_points=0)
    shuffled = list(reversed(rows))
    ordered = sorted_rows(shuffled)
    assert [r["site"] for r in ordered[:16]] == ["res"] * 16
    assert [(r["layer"], r["width"], r["lambda"]) for r in ordered[:4]] == [
        (0, 1024, 0.0003), (0, 1024, 0.001), (0, 4096, 0.0003), (0, 4096, 0.001)]


def test_single_layer_single_lambda_one_site(one_row):
    rows, out, paths = one_row
    page = _check_outputs(paths, out / "report", 1, list(rows[0]))
    assert len(_body_rows(page)) == 1


def test_nan_values_and_empty_logs(tmp_path):
    rows, _ = synthetic_suite(sites=("res", "att"), layers=(0, 1), widths=(256,), lambdas=(0.001, 0.01))
    rows[0]["delta_loss"] = float("nan")
    rows[1]["fvu"] = float("nan")
    rows[2]["l0"] = float("nan")
    rows[3]["freq_hist_edges"] = [-math.inf] + EDGES[1:]  # a "never fired" bin with an open lower edge
    for r in rows[4:]:
        r["delta_loss"] = r["fvu"] = float("nan")
    paths = render_report(rows, [], tmp_path, title="nan <suite> & co", suite_info={"nested": {"a": [1, 2]}})
    page = _check_outputs(paths, tmp_path, len(rows), list(rows[0]))
    assert len(_body_rows(page)) == len(rows)
    assert "n/a" in page
    assert "nan &lt;suite&gt; &amp; co" in page
    table = pq.read_table(tmp_path / "metrics.parquet").to_pylist()
    assert sum(1 for r in table if math.isnan(r["delta_loss"])) == len(rows) - 3


def test_numpy_values_and_extra_keys(tmp_path):
    rows, logs = synthetic_suite(sites=("att",), layers=(1, 2), widths=(512,), lambdas=(0.002,), log_points=5)
    for r in rows:
        r["layer"] = np.int64(r["layer"])
        r["l0"] = np.float32(r["l0"])
        r["freq_hist"] = np.asarray(r["freq_hist"], dtype=np.int64)
        r["note"] = "extra"
    paths = render_report(rows, logs, tmp_path, title="np", suite_info={"tokens": np.int64(5)})
    _check_outputs(paths, tmp_path, len(rows), list(rows[0]))
    table = pq.read_table(tmp_path / "metrics.parquet")
    assert table.column("note").to_pylist() == ["extra", "extra"]


def test_no_rows(tmp_path):
    paths = render_report([], [], tmp_path, title="empty", suite_info={})
    names = {p.name for p in paths}
    assert names == {"metrics.parquet", "index.html", *PLOT_FILES}
    assert pq.read_table(tmp_path / "metrics.parquet").num_rows == 0
    assert "No evaluated SAEs" in (tmp_path / "index.html").read_text(encoding="utf-8")


def with_baselines(rows: list[dict]) -> list[dict]:
    """TopK and ReLU + L1 rows alongside each JumpReLU row, as a suite that trains the baselines has."""
    extra = []
    for r in rows:
        for arch, sparsity, l0_scale in (("topk", 16, 0.9), ("relu", 3.0, 1.3)):
            e = dict(r, architecture=arch, sparsity=sparsity, l0=r["l0"] * l0_scale, fvu=r["fvu"] * 1.2,
                     sae_path=r["sae_path"].replace("lambda_", f"{arch}_"))
            e.pop("lambda")
            extra.append(e)
    return extra


def test_architecture_comparison_when_baselines_are_trained(tmp_path):
    """A suite with TopK and ReLU baselines gets the JumpReLU paper's L0-vs-fidelity comparison; the
    per-lambda plots keep to JumpReLU SAEs."""
    rows, logs = synthetic_suite(sites=("res", "mlp"), layers=(1, 2), widths=(512,), lambdas=(0.001, 0.01),
                                 log_points=3)
    extra = with_baselines(rows)
    paths = render_report(rows + extra, logs, tmp_path, title="archs", suite_info={})
    assert (tmp_path / "architectures_l0_vs_fidelity.png").read_bytes()[:8] == PNG_MAGIC
    assert any(p.name == "architectures_l0_vs_fidelity.png" for p in paths)
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "JumpReLU against its baselines" in page and "TopK" in page and "ReLU + L1" in page
    ordered = sorted_rows(rows + extra)
    assert [r["architecture"] for r in ordered[:6]] == ["jumprelu", "jumprelu", "topk", "topk", "relu", "relu"]
    # a single-architecture suite has no comparison figure: checked on the full suite's page (full_suite)


def _splitting_rows(site: str = "res", layer: int = 1) -> list[dict]:
    """Width 8 -> 16 at one setting: narrow latent 3 has wide latents 0, 5 and 9 at cosine >= 0.7, latent 1
    has 2 and 4, the rest are far."""
    close = {0: (3, 0.95), 5: (3, 0.8), 9: (3, 0.72), 2: (1, 0.9), 4: (1, 0.75)}
    return [{"site": site, "layer": layer, "architecture": "jumprelu", "setting": "lambda_0.001", "narrow_width": 8,
             "wide_width": 16, "wide_latent": w, "narrow_latent": close.get(w, (w % 8, 0.3))[0],
             "cosine": close.get(w, (0, 0.3))[1]} for w in range(16)]


def test_feature_splitting_plot_and_examples_link_into_the_latent_browser(tmp_path):
    rows, logs = synthetic_suite(sites=("res",), layers=(1,), widths=(512,), lambdas=(0.001,), log_points=3)
    render_report(rows, logs, tmp_path, title="split", suite_info={}, splitting=_splitting_rows())
    assert (tmp_path / "feature_splitting.png").read_bytes()[:8] == PNG_MAGIC
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Feature splitting across widths" in page
    first = page.index('latents.html#sae=res/layer_1/width_8/lambda_0.001&amp;latent=3">3</a>')
    second = page.index('latents.html#sae=res/layer_1/width_8/lambda_0.001&amp;latent=1">1</a>')
    assert first < second  # the latent with three splits first
    assert 'has 3 latents of width 16 at cosine &ge; 0.7: <a href="latents.html#sae=res/layer_1/width_16/' \
           'lambda_0.001&amp;latent=0">0</a> (0.95)' in page


def _on_it(rows: list[dict]) -> list[dict]:
    """The same SAEs as judged on an instruction-tuned variant: a little worse, as Gemma Scope found."""
    return [dict(r, model="it", delta_loss=r["delta_loss"] * 1.5, fvu=r["fvu"] * 1.2) for r in rows]


def test_transfer_rows_are_in_the_metrics_and_drawn_beside_the_base_rows(tmp_path):
    rows, logs = synthetic_suite(sites=("res", "mlp"), layers=(1, 2), widths=(512,), lambdas=(0.001,), log_points=3)
    rows = [dict(r, model="base") for r in rows]
    render_report(rows, logs, tmp_path, title="t", suite_info={}, transfer=_on_it(rows))
    table = pq.read_table(tmp_path / "metrics.parquet").to_pylist()
    assert sorted({(r["model"], r["site"], r["layer"]) for r in table}) == sorted(
        {(m, s, layer) for m in ("base", "it") for s in ("res", "mlp") for layer in (1, 2)})
    it = {(r["site"], r["layer"]): r["delta_loss"] for r in table if r["model"] == "it"}
    assert all(it[(r["site"], r["layer"])] == pytest.approx(1.5 * r["delta_loss"]) for r in rows)
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Base to instruction-tuned transfer" in page and 'src="transfer.png"' in page
    # the figure's numbers: per (site, layer), each model's mean delta loss and FVU
    base_res_1 = [r for r in rows if r["site"] == "res" and r["layer"] == 1]
    cells = re.search(r'<table class="transfer">.*?<td>res</td><td>1</td>(.*?)</tr>', page).group(1)
    mean = {k: sum(r[k] for r in base_res_1) / len(base_res_1) for k in ("delta_loss", "fvu")}
    want = [mean["delta_loss"], 1.5 * mean["delta_loss"], mean["fvu"], 1.2 * mean["fvu"]]
    assert re.findall(r"<td>([^<]*)</td>", cells) == [f"{v:.4f}" for v in want]
    assert (tmp_path / "transfer.png").read_bytes()[:8] == PNG_MAGIC


def test_every_registered_plot_is_drawn_and_shown(tmp_path):
    """Each entry of the plot registry writes its file and the page shows it with its caption."""
    rows, logs = synthetic_suite(sites=("res",), layers=(1, 2), widths=(512,), lambdas=(0.001, 0.01), log_points=3)
    paths = render_report(rows + with_baselines(rows), logs, tmp_path, title="all plots", suite_info={},
                          splitting=_splitting_rows(), transfer=_on_it(rows))
    assert [p.name for p in paths] == ["metrics.parquet", *(p.file for p in PLOTS), "index.html"]
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    for plot in PLOTS:
        assert (tmp_path / plot.file).read_bytes()[:8] == PNG_MAGIC, plot.file
        assert f'src="{plot.file}"' in page and f"<figcaption>{plot.caption}</figcaption>" in page, plot.file


def test_unknown_architecture_is_an_error(tmp_path):
    """An architecture the SAE registry does not know is not drawn as a stranger: the report refuses it."""
    rows, logs = synthetic_suite(sites=("res",), layers=(1,), widths=(512,), lambdas=(0.001,), log_points=3)
    rows.append(dict(rows[0], architecture="gated"))
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated'"):
        render_report(rows, logs, tmp_path, title="bad", suite_info={})
    # a row with no architecture field at all is a JumpReLU row, as before the baselines existed
    del rows[-1]["architecture"]
    render_report(rows, logs, tmp_path, title="old rows", suite_info={})
    assert pq.read_table(tmp_path / "metrics.parquet").column("architecture").to_pylist() == ["jumprelu"] * 2
