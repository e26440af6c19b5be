"""The evaluation report: one self-contained HTML page per pipeline run.

Why a single HTML string: the Kubeflow Pipelines UI renders an HTML artifact in
a sandboxed iframe on its Visualizations tab, and MLflow shows the same file as
a run artifact. Neither gives the page network access or a place for side
files, so everything -- CSS and plots -- is inlined: no scripts, no external
stylesheets, fonts or images. Plot text is drawn as SVG paths, so the page
looks the same without any fonts installed.

Why it is built this way:

* Plots use :class:`matplotlib.figure.Figure` with an explicit Agg canvas, never
  ``pyplot``, so rendering inside a long-lived component process leaks no
  global figure state; style settings are applied inside ``rc_context`` and
  restored afterwards.
* The validation month can hold ~10M trips. Histogram and binned statistics use
  every row (they are cheap); the scatter draws a seeded sample of at most
  :data:`SCATTER_MAX_POINTS` and its points are rasterized inside the SVG,
  which keeps the page around a few hundred KB instead of tens of MB.
* Output is deterministic (fixed sampling seed, fixed SVG id salt, no dates),
  so the same evaluation renders byte-identical reports.
* Candidate names and hyperparameters come from pipeline parameters, i.e. from
  whoever submits the run, so every interpolated string is HTML-escaped.

The page shell, the base styles, escaping and the SVG/PNG embedding are shared
with the monitoring report through ``components/html_report/page.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.html_report.page import (
    BLUE,
    FIGURE_CSS,
    GREY,
    PAGE_CSS,
    PLOT_RC,
    RED,
    SVG_MAX_CHARS,
    TABLE_CSS,
    esc,
    figure_markup,
    fmt,
    html_document,
)

#: Most points the predicted-vs-actual scatter draws (seeded sample of the rows).
SCATTER_MAX_POINTS = 5_000
#: Seed of the scatter sample, fixed so reports are reproducible.
SCATTER_SEED = 20_210_201
#: Quantile range the plot axes are limited to, so a few extreme trips do not
#: squash the bulk of the distribution into one corner.
_AXIS_QUANTILES = (0.005, 0.995)
#: Bins of the residual-vs-actual plot; bins with fewer trips are not drawn.
_RESIDUAL_BINS = 30
_MIN_TRIPS_PER_BIN = 20

#: The gate banner (between the page header and the candidates table).
_GATE_CSS = """\
.gate { border: 1px solid; border-left-width: 5px; border-radius: 8px; padding: 14px 18px; }
.gate.passed { background: #ecfdf3; border-color: #abefc6; border-left-color: #17b26a; color: #054f31; }
.gate.failed { background: #fef3f2; border-color: #fecdca; border-left-color: #f04438; color: #7a271a; }
.gate .verdict { font-size: 17px; font-weight: 650; margin: 0 0 2px; }
.gate .reason { margin: 0 0 10px; }
.gate dl { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 0; }
.gate dt { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; opacity: .75; }
.gate dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
"""
#: The winner's row in the candidates table.
_WINNER_CSS = """\
tr.winner td { background: #eff6ff; }
tr.winner td:first-child { box-shadow: inset 4px 0 0 #2563eb; font-weight: 600; }
.badge { display: inline-block; margin-left: 8px; padding: 0 7px; border-radius: 999px; font-size: 11px;
  font-weight: 600; background: #2563eb; color: #fff; vertical-align: 1px; }
"""
_CSS = PAGE_CSS + _GATE_CSS + TABLE_CSS + _WINNER_CSS + FIGURE_CSS


def render_evaluation_report(
    evaluation: Mapping[str, Any],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    context: Mapping[str, str],
) -> str:
    """Render the evaluation of one pipeline run as a self-contained HTML document.

    ``evaluation`` holds ``candidates`` (name, rmse, mae, train_seconds, params),
    the ``winner`` name and the promotion ``gate`` verdict; ``y_true`` and
    ``y_pred`` are the validation-month durations (minutes) and the winner's
    predictions for them; ``context`` (color, months, run id, ...) is shown as
    the header line. Raises ``ValueError`` when the two arrays differ in length.
    """
    truth = np.asarray(y_true, dtype=np.float64).ravel()
    prediction = np.asarray(y_pred, dtype=np.float64).ravel()
    if truth.shape != prediction.shape:
        raise ValueError(f"{truth.shape[0]} actual durations but {prediction.shape[0]} predictions")
    finite = np.isfinite(truth) & np.isfinite(prediction)
    dropped = int(truth.size - np.count_nonzero(finite))
    if dropped:
        truth, prediction = truth[finite], prediction[finite]

    candidates = sorted(evaluation.get("candidates", []), key=_rmse_sort_key)
    winner = str(evaluation.get("winner", ""))
    gate: Mapping[str, Any] = evaluation.get("gate", {})

    title = "Trip duration model evaluation"
    body = [
        f"<h1>{esc(title)}</h1>",
        _context_html(context, truth.size),
        _gate_html(gate),
        "<h2>Candidates</h2>",
        _candidates_html(candidates, winner),
        f"<h2>Winner on the validation month: {esc(winner) or 'n/a'}</h2>",
        _plots_html(truth, prediction, dropped),
    ]
    page_title = " \u00b7 ".join([title, *(str(v) for v in context.values() if str(v))])
    return html_document(page_title, _CSS, body)


# --------------------------------------------------------------------------- HTML parts


def _rmse_sort_key(candidate: Mapping[str, Any]) -> tuple[bool, float]:
    try:
        rmse = float(candidate.get("rmse", math.nan))
    except (TypeError, ValueError):
        rmse = math.nan
    return (math.isnan(rmse), 0.0 if math.isnan(rmse) else rmse)


def _context_html(context: Mapping[str, str], rows: int) -> str:
    items = [
        f"<span><b>{esc(str(key).replace('_', ' '))}:</b> {esc(value)}</span>"
        for key, value in context.items()
    ]
    items.append(f"<span><b>validation trips:</b> {rows:,}</span>")
    return f'<p class="context">{"".join(items)}</p>'


def _gate_html(gate: Mapping[str, Any]) -> str:
    passed = bool(gate.get("passed", False))
    challenger = gate.get("challenger_rmse")
    champion = gate.get("champion_rmse")
    version = gate.get("champion_version")

    facts: list[tuple[str, str]] = [("Challenger RMSE", f"{fmt(challenger, '.3f')} min")]
    if champion is None:
        facts.append(("Champion RMSE", "no champion yet (first model)"))
    else:
        facts.append(("Champion RMSE", f"{fmt(champion, '.3f')} min"))
        if version is not None:
            facts.append(("Champion version", esc(version)))
        try:
            gain = float(champion) - float(challenger)
            relative = gain / float(champion) if float(champion) else math.nan
        except (TypeError, ValueError):
            gain = relative = math.nan
        facts.append(("Improvement", f"{fmt(gain, '+.3f')} min ({fmt(relative * 100, '+.2f')} %)"))
    # min_improvement is a fraction of the champion's RMSE (see components.evaluation.gate).
    facts.append(("Required improvement", f"{fmt(gate.get('min_improvement'), '.1%')} lower RMSE"))

    state = "passed" if passed else "failed"
    verdict = "Gate passed" if passed else "Gate failed"
    listing = "".join(f"<div><dt>{label}</dt><dd>{value}</dd></div>" for label, value in facts)
    return (
        f'<section class="gate {state}" role="status">'
        f'<p class="verdict">{verdict}</p>'
        f'<p class="reason">{esc(gate.get("reason", "")) or "No reason given."}</p>'
        f"<dl>{listing}</dl>"
        "</section>"
    )


def _candidates_html(candidates: Sequence[Mapping[str, Any]], winner: str) -> str:
    rows = []
    for candidate in candidates:
        name = str(candidate.get("name", ""))
        is_winner = name == winner
        badge = '<span class="badge">winner</span>' if is_winner else ""
        params = candidate.get("params") or {}
        row_class = ' class="winner"' if is_winner else ""
        rows.append(
            f"<tr{row_class}>"
            f"<td>{esc(name)}{badge}</td>"
            f'<td class="num">{fmt(candidate.get("rmse"), ".3f")}</td>'
            f'<td class="num">{fmt(candidate.get("mae"), ".3f")}</td>'
            f'<td class="num">{fmt(candidate.get("train_seconds"), ".1f")}</td>'
            f"<td><code>{esc(_params_text(params))}</code></td>"
            "</tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="5" class="note">No candidates were evaluated.</td></tr>')
    return (
        '<div class="card"><table>'
        "<thead><tr><th>Candidate</th>"
        '<th class="num">RMSE (min)</th><th class="num">MAE (min)</th>'
        '<th class="num">Train (s)</th><th>Params</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody>"
        "</table></div>"
    )


def _params_text(params: object) -> str:
    if not isinstance(params, Mapping):
        return str(params)
    if not params:
        return "defaults"
    return ", ".join(f"{key}={_param_value(params[key])}" for key in sorted(params, key=str))


def _param_value(value: object) -> str:
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


# --------------------------------------------------------------------------- plots


def _plots_html(truth: np.ndarray, prediction: np.ndarray, dropped: int) -> str:
    notes = []
    if dropped:
        notes.append(f"{dropped:,} rows with a missing or non-finite value are left out.")
    if truth.size == 0:
        notes.append("No validation rows to plot.")
        return "".join(f'<p class="note">{esc(note)}</p>' for note in notes)

    residual = prediction - truth
    scatter, scatter_caption = _scatter_figure(truth, prediction)
    panels = [
        (scatter, "sc", scatter_caption),
        (
            _residual_histogram_figure(residual),
            "rh",
            "Residual = predicted \u2212 actual, all rows; the x axis spans the central 99 % of residuals.",
        ),
        (
            _residual_by_actual_figure(truth, residual),
            "ra",
            f"Trips binned by actual duration; bins with fewer than {_MIN_TRIPS_PER_BIN} trips are omitted.",
        ),
    ]
    # SVG_MAX_CHARS is read here, at render time, so a test can lower it on this module.
    figures = "".join(
        f'<figure class="card">{figure_markup(fig, key, SVG_MAX_CHARS)}'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for fig, key, caption in panels
    )
    note_html = "".join(f'<p class="note">{esc(note)}</p>' for note in notes)
    return f'<div class="plots">{figures}</div>{note_html}'


def _new_figure(width: float = 5.6, height: float = 4.2) -> Figure:
    with matplotlib.rc_context(PLOT_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axis_range(*arrays: np.ndarray) -> tuple[float, float]:
    values = np.concatenate(arrays)
    low, high = (float(q) for q in np.quantile(values, _AXIS_QUANTILES))
    if not high > low:
        low, high = low - 1.0, high + 1.0
    return low, high


def _scatter_figure(truth: np.ndarray, prediction: np.ndarray) -> tuple[Figure, str]:
    total = truth.size
    if total > SCATTER_MAX_POINTS:
        rng = np.random.default_rng(SCATTER_SEED)
        index = np.sort(rng.choice(total, size=SCATTER_MAX_POINTS, replace=False))
        sample_truth, sample_pred = truth[index], prediction[index]
        caption = f"{SCATTER_MAX_POINTS:,} of {total:,} trips, seeded random sample."
    else:
        sample_truth, sample_pred = truth, prediction
        caption = f"All {total:,} trips."
    low, high = _axis_range(truth, prediction)
    low = min(low, 0.0)

    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure()
        ax = fig.add_subplot()
        ax.scatter(
            sample_truth,
            sample_pred,
            s=5,
            alpha=0.3,
            color=BLUE,
            linewidths=0,
            rasterized=True,
        )
        ax.plot([low, high], [low, high], color=RED, linewidth=1.2, label="y = x (perfect prediction)")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_xlabel("actual duration (min)")
        ax.set_ylabel("predicted duration (min)")
        ax.set_title("Predicted vs actual")
        ax.legend(loc="upper left")
    return fig, caption + " Axes span the central 99 % of values."


def _residual_histogram_figure(residual: np.ndarray) -> Figure:
    mean = float(residual.mean())
    std = float(residual.std())
    low, high = _axis_range(residual)
    counts, edges = np.histogram(residual, bins=80, range=(low, high))

    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure()
        ax = fig.add_subplot()
        ax.stairs(counts, edges, fill=True, color=BLUE, alpha=0.75, linewidth=0)
        ax.axvline(0.0, color=GREY, linewidth=1.0, linestyle=":", label="zero")
        ax.axvline(mean, color=RED, linewidth=1.2, label="mean")
        ax.axvspan(mean - std, mean + std, color=RED, alpha=0.07, linewidth=0, label="\u00b11 std")
        ax.text(
            0.98,
            0.96,
            f"mean = {mean:+.2f} min\nstd = {std:.2f} min\nn = {residual.size:,}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8.5,
            color="#374151",
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "#e5e7eb"},
        )
        ax.set_xlim(low, high)
        ax.set_xlabel("residual: predicted \u2212 actual (min)")
        ax.set_ylabel("trips")
        ax.set_title("Residual distribution")
        ax.legend(loc="upper left")
    return fig


def _residual_by_actual_figure(truth: np.ndarray, residual: np.ndarray) -> Figure:
    low, high = _axis_range(truth)
    low = min(low, 0.0)
    edges = np.linspace(low, high, _RESIDUAL_BINS + 1)
    bins = np.clip(np.searchsorted(edges, truth, side="right") - 1, 0, _RESIDUAL_BINS - 1)
    inside = (truth >= low) & (truth <= high)
    bins, values = bins[inside], residual[inside]
    counts = np.bincount(bins, minlength=_RESIDUAL_BINS).astype(np.float64)
    sums = np.bincount(bins, weights=values, minlength=_RESIDUAL_BINS)
    squares = np.bincount(bins, weights=values * values, minlength=_RESIDUAL_BINS)
    keep = counts >= _MIN_TRIPS_PER_BIN
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
        std = np.sqrt(np.maximum(squares / counts - mean * mean, 0.0))
    centers = (edges[:-1] + edges[1:]) / 2

    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure()
        ax = fig.add_subplot()
        ax.axhline(0.0, color=GREY, linewidth=1.0, linestyle=":")
        if keep.any():
            x, m, s = centers[keep], mean[keep], std[keep]
            ax.fill_between(x, m - s, m + s, color=BLUE, alpha=0.15, linewidth=0, label="mean \u00b1 1 std")
            ax.plot(x, m, color=BLUE, linewidth=1.6, marker="o", markersize=3, label="mean residual")
            ax.legend(loc="upper right")
        else:
            ax.text(0.5, 0.5, "too few trips per bin", transform=ax.transAxes, ha="center", color=GREY)
        ax.set_xlim(low, high)
        ax.set_xlabel("actual duration (min)")
        ax.set_ylabel("residual: predicted \u2212 actual (min)")
        ax.set_title("Residuals vs actual duration")
    return fig
