"""The parts every report page shares: escaping, number formatting, the stylesheet's base, inline plots.

The evaluation report (``components/evaluation``) and the monitoring report
(``components/monitoring``) are both one HTML string that has to render inside a
sandboxed iframe (the KFP UI's Visualizations tab) and as an MLflow artifact:
no network, no side files, no scripts. They sit on the same layer and may not
import each other, so what both need lives here, one layer below both:

* :func:`esc` -- every interpolated string goes through it (names, reasons and
  versions come from whoever submits a run or registers a model);
* :data:`PLOT_RC` -- the plot style, with ``svg.fonttype = "path"`` so plot text
  is drawn as paths and looks the same without any fonts installed;
* :func:`figure_markup` -- a figure as inline SVG with deterministic, per-plot
  prefixed ids (several SVGs share one page's id namespace), or a PNG ``<img>``
  when the SVG would be too large;
* :func:`html_document` and the CSS blocks -- the page shell and the base styles
  each report interleaves with its own.

Figures themselves are made by each report (``matplotlib.figure.Figure`` with an
explicit Agg canvas, never ``pyplot``), so no global figure state leaks.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from typing import Any, Final

import matplotlib
from matplotlib.figure import Figure

#: A plot whose SVG exceeds this many characters is embedded as a PNG instead.
SVG_MAX_CHARS: Final = 400_000

BLUE: Final = "#2563eb"
GREY: Final = "#6b7280"
RED: Final = "#dc2626"

PLOT_RC: Final[dict[str, Any]] = {
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9.0,
    "axes.labelcolor": "#374151",
    "axes.edgecolor": "#9ca3af",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
}

#: Page, headings and the context line under the title.
PAGE_CSS: Final = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; background: #f6f7f9; color: #1f2937;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; }
h1 { font-size: 22px; margin: 0 0 4px; font-weight: 650; }
h2 { font-size: 16px; margin: 28px 0 10px; font-weight: 600; }
.context { color: #4b5563; margin: 0 0 18px; }
.context span + span::before { content: "\\00b7"; margin: 0 8px; color: #9ca3af; }
.context b { font-weight: 600; color: #374151; }
"""
#: White cards and the tables inside them.
TABLE_CSS: Final = """\
.card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 8px 12px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
th { font-size: 12px; font-weight: 600; color: #6b7280; text-transform: uppercase; letter-spacing: .04em; }
td.num, th.num { text-align: right; white-space: nowrap; }
tbody tr:last-child td { border-bottom: 0; }
"""
#: Code, the grid of plots, captions and notes.
FIGURE_CSS: Final = """\
code { font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #374151;
  overflow-wrap: anywhere; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }
figure { margin: 0; padding: 12px; }
figure svg, figure img { display: block; width: 100%; height: auto; }
figcaption, .note { color: #6b7280; font-size: 12.5px; margin-top: 6px; }
"""


def esc(value: object) -> str:
    """``value`` as text that is safe inside HTML element content and quoted attributes."""
    return html.escape(str(value), quote=True)


def fmt(value: object, spec: str) -> str:
    """Format a number with ``spec``; missing or non-numeric values become ``n/a``."""
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if math.isnan(number):
        return "n/a"
    return format(number, spec)


def html_document(title: str, css: str, body: Sequence[str]) -> str:
    """The page: ``body`` parts (already HTML) in ``<main>``, ``css`` inline, ``title`` escaped here."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title>",
            f"<style>{css}</style>",
            "</head>",
            "<body>",
            "<main>",
            *body,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_SVG_ID = re.compile(r'(\sid=)"')
_SVG_ID_REF = re.compile(r'(href="#|url\(#)')


def figure_markup(fig: Figure, key: str, max_svg_chars: int = SVG_MAX_CHARS) -> str:
    """Inline SVG for ``fig``, or a base64 PNG ``<img>`` when the SVG exceeds ``max_svg_chars``.

    ``key`` (short, fixed per plot, unique on its page) salts the SVG id hashes, so
    ids are deterministic, and prefixes every id, so the page's inline SVGs cannot clash.
    """
    buffer = io.BytesIO()
    with matplotlib.rc_context({**PLOT_RC, "svg.hashsalt": f"taxi-report-{key}"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue().decode("utf-8")
    svg = _SVG_METADATA.sub("", svg[svg.index("<svg") :]).strip()
    # Several SVGs share one HTML id namespace: give this plot's ids its own prefix.
    svg = _SVG_ID.sub(lambda m: f'{m[1]}"{key}-', svg)
    svg = _SVG_ID_REF.sub(lambda m: f"{m[1]}{key}-", svg)
    if len(svg) <= max_svg_chars:
        return svg
    buffer = io.BytesIO()
    with matplotlib.rc_context(PLOT_RC):
        fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    alt = fig.axes[0].get_title() if fig.axes else "plot"
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'
