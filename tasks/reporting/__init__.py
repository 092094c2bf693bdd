"""The suite report: metrics.parquet, PNG plots and a self-contained index.html.

Pure presentation: it turns the evaluation rows and training-log records the report stage gathered from
`evals/` and `saes/` into files in `report/`, so it runs (and is tested) without the model, the data or any
orchestration. The CLI's terminal table and the HTML table share `format_table_rows`, so a number reads the
same wherever a researcher sees it. `latents.html` browses what the inspect stage found, latent by latent.
"""

from .formatting import TABLE_COLUMNS, format_table_rows, sorted_rows
from .plots import PLOT_FILES
from .latents_page import LATENTS_PAGE, sae_script, write_latent_browser
from .render import render_report

__all__ = ["TABLE_COLUMNS", "PLOT_FILES", "LATENTS_PAGE", "format_table_rows", "sorted_rows", "render_report",
           "sae_script", "write_latent_browser"]
