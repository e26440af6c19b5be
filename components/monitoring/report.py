"""The monitor's report: one self-contained HTML page for one judged window of served traffic.

It shows a person what the verdict JSON (``components/monitoring/monitor.py``) tells
the canary judge and the retraining policy: the verdict, each drift test with what
its effect size means, the window's distributions against the version's reference
profile, the zones that moved most, and live accuracy over time.

Like the evaluation report (``components/evaluation/report.py``), and for the same
reasons -- the KFP UI shows an HTML artifact in a sandboxed iframe and MLflow keeps
it as a run artifact -- the page is one string with everything inline: no scripts,
no external styles, fonts or images; plot text drawn as SVG paths; a PNG instead of
an SVG that would be too large. Figures are :class:`matplotlib.figure.Figure` with an
explicit Agg canvas (never ``pyplot``), styled inside ``rc_context``. The page shell,
base styles, escaping and embedding come from ``components/html_report/page.py``.

Why it is built this way:

* A window can hold millions of predictions. Every plot is a histogram on the
  profile's fixed bins, a ``bincount`` over zones, or a per-day grouping of the
  labelled trips: whole-array numpy/pandas work over every row, nothing per row in
  Python, and a page whose size does not grow with the window.
* The reference side comes from the profile alone (its validation month), on the
  same bins the drift tests use, so the plots show exactly what was judged.
* Output is deterministic: no clocks, fixed SVG id salts, stable sort orders.
* The model version, feature names and window bounds come from the verdict
  document, i.e. from whoever wrote it, so every interpolated string is escaped and
  CSS classes come from a fixed set, never from the document.
* A window too small to judge, or without labels yet, still renders: each empty
  section says why it is empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import matplotlib
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.features.trip_domain import MAX_LOCATION_ID
from components.features.trip_features import TARGET_COLUMN
from components.html_report.page import (
    BLUE,
    FIGURE_CSS,
    GREY,
    PAGE_CSS,
    PLOT_RC,
    RED,
    TABLE_CSS,
    esc,
    figure_markup,
    fmt,
    html_document,
)
from components.monitoring.accuracy import AccuracyPolicy
from components.monitoring.drift import DriftPolicy
from components.monitoring.reference_profile import Distribution, ReferenceProfile

#: Days with fewer labelled trips than this get no RMSE point: a handful of trips says nothing.
MIN_LABELS_PER_DAY: Final = 30
#: Zones shown per direction in "the zones that moved most".
TOP_ZONES: Final = 10
#: The distribution plots' x axes end where both sides have this share of their trips.
_VISIBLE_SHARE: Final = 0.995

_HALF_DAY: Final = np.timedelta64(12, "h")
_AMBER: Final = "#d97706"
_LIGHT: Final = "#9ca3af"
_BAR: Final = "#e5e7eb"

#: Plain words for each drift feature: label, what the statistic is, what the effect size means.
FEATURE_TEXT: Final[Mapping[str, tuple[str, str, str]]] = {
    "trip_distance": (
        "Trip distance",
        "Kolmogorov\u2013Smirnov distance between the window's and the reference's distance bins",
        "Wasserstein distance in reference interquartile ranges: how far, on average, a trip's "
        "distance moved, as a share of the spread of typical trips (0.10 = a tenth of the IQR)",
    ),
    "PULocationID": (
        "Pickup zones",
        "chi-square over pickup zones, rare zones pooled",
        "total variation of the pickup-zone mix: the share of trips that would have to start in "
        "another zone for the window to look like the reference",
    ),
    "DOLocationID": (
        "Dropoff zones",
        "chi-square over dropoff zones, rare zones pooled",
        "total variation of the dropoff-zone mix: the share of trips that would have to end in "
        "another zone for the window to look like the reference",
    ),
    "unseen_pairs": (
        "Unseen zone pairs",
        "share of trips on pickup\u2192dropoff pairs never seen in training, above the reference's share",
        "the same excess share: extra trips (as a fraction of the window) on routes the model never "
        "trained on",
    ),
    "prediction": (
        "Predicted minutes",
        "Kolmogorov\u2013Smirnov distance between the window's and the reference's prediction bins",
        "Wasserstein distance in reference interquartile ranges of the predictions: how far the "
        "model's answers moved, relative to their usual spread",
    ),
}

_OPEN: Final = "\u2026"  # an open window bound
_VERDICT_TEXT: Final[Mapping[str, tuple[str, str]]] = {
    "ok": ("ok", "OK"),
    "drift": ("drift", "Drift"),
    "degraded": ("degraded", "Accuracy degraded"),
    "insufficient_data": ("insufficient", "Insufficient data"),
}

_MONITOR_CSS: Final = """\
.verdict { border: 1px solid; border-left-width: 5px; border-radius: 8px; padding: 14px 18px; }
.verdict.ok { background: #ecfdf3; border-color: #abefc6; border-left-color: #17b26a; color: #054f31; }
.verdict.drift { background: #fffaeb; border-color: #fedf89; border-left-color: #f79009; color: #7a2e0e; }
.verdict.degraded { background: #fef3f2; border-color: #fecdca; border-left-color: #f04438; color: #7a271a; }
.verdict.insufficient, .verdict.unknown { background: #f2f4f7; border-color: #d0d5dd;
  border-left-color: #667085; color: #344054; }
.verdict .headline { font-size: 17px; font-weight: 650; margin: 0 0 2px; }
.verdict .reason { margin: 0 0 10px; }
.verdict dl { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 0; }
.verdict dt { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; opacity: .75; }
.verdict dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
.pill { display: inline-block; padding: 0 8px; border-radius: 999px; font-size: 11.5px; font-weight: 600;
  letter-spacing: .02em; background: #e5e7eb; color: #374151; }
.pill.ok { background: #17b26a; color: #fff; }
.pill.drift { background: #f79009; color: #fff; }
.pill.degraded { background: #f04438; color: #fff; }
.pill.insufficient, .pill.unknown { background: #667085; color: #fff; }
.pill.yes { background: #f04438; color: #fff; }
td .what { display: block; color: #6b7280; font-size: 12px; margin-top: 2px; }
td.over { color: #b42318; font-weight: 600; }
td.up { color: #b42318; }
td.down { color: #175cd3; }
tr.drifted td { background: #fffbfa; }
.plots.wide { grid-template-columns: 1fr; }
.plots.half { grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); }
.card.spaced { margin-top: 16px; }
.empty { padding: 14px 18px; color: #4b5563; }
.explain { color: #4b5563; margin: -4px 0 10px; max-width: 900px; }
"""
_CSS: Final = PAGE_CSS + _MONITOR_CSS + TABLE_CSS + FIGURE_CSS


def render_monitor_report(
    document: Mapping[str, Any],
    window: pd.DataFrame,
    profile: ReferenceProfile,
    history: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The verdict ``document`` for ``window`` as a self-contained HTML page.

    ``window`` holds the judged rows: ``event_time`` (UTC), PULocationID, DOLocationID,
    trip_distance, prediction and, where a label has been joined,
    ``trip_duration_minutes`` (NaN for trips without one). ``profile`` is the judged
    version's reference profile; ``history`` the earlier stored verdicts, oldest first,
    for accuracy over time across windows.
    """
    rows = _Rows.of(window)
    version = str(document.get("model_version", ""))
    window_meta: Mapping[str, Any] = _mapping(document.get("window"))
    start, end = str(window_meta.get("start", "") or ""), str(window_meta.get("end", "") or "")

    title = "Model monitoring report"
    body = [
        f"<h1>{esc(title)}</h1>",
        _context_html(profile),
        _verdict_html(document),
        "<h2>Feature drift</h2>",
        _drift_html(_mapping(document.get("drift")), rows.n),
        "<h2>Live accuracy</h2>",
        _accuracy_html(_mapping(document.get("accuracy")), rows),
        "<h2>Distributions: reference vs this window</h2>",
        _distributions_html(rows, profile),
        "<h2>Zones that moved most</h2>",
        _zones_html(rows, profile),
        "<h2>Accuracy over time</h2>",
        _accuracy_over_time_html(document, rows, profile, history),
        "<h2>Residuals: reference vs this window</h2>",
        _residuals_html(rows, profile),
    ]
    page_title = " \u00b7 ".join(
        part for part in ("Monitoring", f"version {version}" if version else "", _span(start, end)) if part
    )
    return html_document(page_title, _CSS, body)


# --------------------------------------------------------------------------- the window's columns


@dataclass(frozen=True)
class _Rows:
    """The window as numpy arrays, once: every section reads these, never the frame again."""

    n: int
    distance: np.ndarray  # finite values only
    prediction: np.ndarray  # finite values only
    pickup: np.ndarray  # zone ids (int64), rows with a valid id
    dropoff: np.ndarray
    day: np.ndarray  # labelled rows: UTC day (datetime64[ns] at midnight); NaT without an event time
    actual: np.ndarray  # labelled rows only
    predicted: np.ndarray  # the same labelled rows' predictions
    latest_event: np.datetime64 | None  # newest event time in the window (naive UTC)
    has_event_time: bool

    @classmethod
    def of(cls, window: pd.DataFrame) -> _Rows:
        prediction = _floats(window, "prediction")
        actual = _floats(window, TARGET_COLUMN) if TARGET_COLUMN in window.columns else None
        has_event_time = "event_time" in window.columns
        if has_event_time:
            stamps = pd.to_datetime(window["event_time"], utc=True, errors="coerce")
            naive = stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        else:
            naive = np.full(len(window), np.datetime64("NaT"), dtype="datetime64[ns]")
        valid_times = naive[~np.isnat(naive)]
        latest = valid_times.max() if valid_times.size else None
        if actual is None:
            labelled = np.zeros(len(window), dtype=bool)
            actual = np.empty(len(window))
        else:
            labelled = np.isfinite(actual) & np.isfinite(prediction)
        return cls(
            n=len(window),
            distance=_finite(_floats(window, "trip_distance")),
            prediction=_finite(prediction),
            pickup=_zone_ids(window, "PULocationID"),
            dropoff=_zone_ids(window, "DOLocationID"),
            day=naive[labelled].astype("datetime64[D]").astype("datetime64[ns]"),
            actual=actual[labelled],
            predicted=prediction[labelled],
            latest_event=latest,
            has_event_time=has_event_time,
        )

    @property
    def labelled(self) -> int:
        return int(self.actual.size)


def _floats(window: pd.DataFrame, column: str) -> np.ndarray:
    if column not in window.columns:
        return np.full(len(window), np.nan)
    values = pd.to_numeric(window[column], errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _zone_ids(window: pd.DataFrame, column: str) -> np.ndarray:
    ids = _finite(_floats(window, column))
    return ids[(ids >= 0) & (ids <= MAX_LOCATION_ID)].astype(np.int64)


# --------------------------------------------------------------------------- header and verdict


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _span(start: str, end: str) -> str:
    if not start and not end:
        return ""
    return f"{start or _OPEN} \u2013 {end or _OPEN}"


def _context_html(profile: ReferenceProfile) -> str:
    items = [
        f"<span><b>reference:</b> {profile.validation.rows:,} validation trips</span>",
        f"<span><b>candidate:</b> {esc(profile.candidate)}</span>",
        f"<span><b>validation RMSE:</b> {fmt(profile.scores.rmse, '.3f')} min</span>",
    ]
    return f'<p class="context">{"".join(items)}</p>'


def _verdict_html(document: Mapping[str, Any]) -> str:
    verdict = str(document.get("verdict", ""))
    css_class, headline = _VERDICT_TEXT.get(verdict, ("unknown", f"Unknown verdict {verdict!r}"))
    window = _mapping(document.get("window"))
    accuracy = _mapping(document.get("accuracy"))
    labelled = window.get("labelled", accuracy.get("labelled"))
    facts = [
        ("Model version", esc(document.get("model_version", "")) or "n/a"),
        ("Window start", esc(window.get("start", "")) or "open"),
        ("Window end", esc(window.get("end", "")) or "open"),
        ("Predictions", fmt(window.get("predictions"), ",.0f")),
        ("Labelled", fmt(labelled, ",.0f")),
        ("Label coverage", fmt(accuracy.get("label_coverage"), ".1%")),
        ("Evaluated at", esc(document.get("evaluated_at", "")) or "not stored"),
    ]
    listing = "".join(f"<div><dt>{label}</dt><dd>{value}</dd></div>" for label, value in facts)
    return (
        f'<section class="verdict {css_class}" role="status">'
        f'<p class="headline"><span class="pill {css_class}">{esc(verdict or "none")}</span> '
        f"{esc(headline)}</p>"
        f'<p class="reason">{esc(_reason(verdict, document))}</p>'
        f"<dl>{listing}</dl>"
        "</section>"
    )


def _reason(verdict: str, document: Mapping[str, Any]) -> str:
    drift = _mapping(document.get("drift"))
    accuracy = _mapping(document.get("accuracy"))
    features = _mapping(drift.get("features"))
    moved = [_label(name) for name, result in features.items() if _mapping(result).get("drifted")]
    if verdict == "degraded":
        ci = _interval(accuracy)
        return (
            f"Live RMSE {fmt(accuracy.get('rmse'), '.3f')} min (95% interval {fmt(ci[0], '.3f')}\u2013"
            f"{fmt(ci[1], '.3f')}) is confirmed worse than the validation RMSE "
            f"{fmt(accuracy.get('baseline_rmse'), '.3f')} min by more than the margin."
            + (f" Drift as well in: {', '.join(moved)}." if moved else "")
        )
    if verdict == "drift":
        return f"Drift in: {', '.join(moved) or 'n/a'}. Live accuracy is not confirmed worse."
    if verdict == "ok":
        return "No feature drifted by a margin that matters, and live accuracy is not confirmed worse."
    if verdict == "insufficient_data":
        return (
            f"Too few trips to judge drift ({fmt(drift.get('window_trips'), ',.0f')} in the window) and too "
            f"few labels to judge accuracy ({fmt(accuracy.get('labelled'), ',.0f')} labelled)."
        )
    return "The verdict document does not carry a verdict this report knows."


def _label(name: str) -> str:
    return FEATURE_TEXT.get(name, (name, "", ""))[0]


# --------------------------------------------------------------------------- drift table


def _drift_html(drift: Mapping[str, Any], window_trips: int) -> str:
    features = _mapping(drift.get("features"))
    if not features:
        trips = drift.get("window_trips", window_trips)
        why = (
            f"Not judged: the window has {fmt(trips, ',.0f')} trips, fewer than the monitor's minimum "
            f"(default {DriftPolicy().min_window:,}). Below it every difference is noise, so the monitor "
            "says insufficient data, never drift."
            if drift.get("verdict") == "insufficient_data" or not drift
            else "The verdict holds no per-feature drift results."
        )
        return f'<div class="card empty note">{esc(why)}</div>'
    rows = []
    for name, raw in features.items():
        result = _mapping(raw)
        label, statistic_text, effect_text = FEATURE_TEXT.get(
            str(name),
            (str(name), "a statistic this report does not know", "an effect this report does not know"),
        )
        drifted = bool(result.get("drifted"))
        significant = _greater(result.get("statistic"), result.get("threshold"))
        large = _at_least(result.get("effect"), result.get("min_effect"))
        flag = '<span class="pill yes">drifted</span>' if drifted else "no"
        rows.append(
            f"<tr{_DRIFTED_ROW if drifted else ''}>"
            f"<td><b>{esc(label)}</b> <code>{esc(name)}</code>"
            f'<span class="what">statistic: {esc(statistic_text)}</span>'
            f'<span class="what">effect: {esc(effect_text)}</span></td>'
            f'<td class="num{" over" if significant else ""}">{fmt(result.get("statistic"), ".4g")}</td>'
            f'<td class="num">{fmt(result.get("threshold"), ".4g")}</td>'
            f'<td class="num{" over" if large else ""}">{fmt(result.get("effect"), ".3f")}</td>'
            f'<td class="num">{fmt(result.get("min_effect"), ".3f")}</td>'
            f"<td>{flag}</td>"
            "</tr>"
        )
    return (
        '<p class="explain">A feature drifts only when both hold: its statistic is above the threshold '
        "(what windows of this many trips drawn from the reference month produce, at a 1% false-alarm "
        "rate shared by all features) <em>and</em> its effect reaches the minimum effect that matters. "
        "Values in red cross their line.</p>"
        '<div class="card"><table>'
        '<thead><tr><th>Feature</th><th class="num">Statistic</th><th class="num">Threshold</th>'
        '<th class="num">Effect</th><th class="num">Min effect</th><th>Drifted</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


_DRIFTED_ROW: Final = ' class="drifted"'


def _number(value: object) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _interval(accuracy: Mapping[str, Any]) -> tuple[float, float]:
    """The RMSE confidence interval as two numbers (NaN when the document has none or a bad one)."""
    ci = accuracy.get("rmse_ci")
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        return _number(ci[0]), _number(ci[1])
    return math.nan, math.nan


def _greater(value: object, line: object) -> bool:
    return _number(value) > _number(line)


def _at_least(value: object, line: object) -> bool:
    return _number(value) >= _number(line)


# --------------------------------------------------------------------------- accuracy summary


def _accuracy_html(accuracy: Mapping[str, Any], rows: _Rows) -> str:
    baseline = _number(accuracy.get("baseline_rmse"))
    rmse = _number(accuracy.get("rmse"))
    if math.isnan(rmse):
        labelled = accuracy.get("labelled", rows.labelled)
        why = (
            "No labels have been joined to this window yet: live accuracy needs the trips' actual "
            "durations (taxi-mlops labels --month YYYY-MM, once the month's TLC file has landed)."
            if not _number(labelled)
            else f"Not judged: {fmt(labelled, ',.0f')} labelled trips, fewer than the monitor's minimum "
            f"(default {AccuracyPolicy().min_labelled:,}); too few to tell a worse model from bad luck."
        )
        return f'<div class="card empty note">{esc(why)}</div>'
    ci = _interval(accuracy)
    change = (rmse - baseline) / baseline if baseline else math.nan
    degraded = bool(accuracy.get("degraded"))
    facts = [
        ("Live RMSE", f"{fmt(rmse, '.3f')} min"),
        ("95% interval", f"{fmt(ci[0], '.3f')} \u2013 {fmt(ci[1], '.3f')} min"),
        ("Validation RMSE", f"{fmt(baseline, '.3f')} min"),
        ("Change", f"{fmt(change, '+.1%')}"),
        ("Live MAE", f"{fmt(accuracy.get('mae'), '.3f')} min"),
        ("Labelled", fmt(accuracy.get("labelled"), ",.0f")),
        ("Label coverage", fmt(accuracy.get("label_coverage"), ".1%")),
        ("Degraded", '<span class="pill yes">yes</span>' if degraded else "no"),
    ]
    cells = "".join(f'<th class="num">{label}</th>' for label, _ in facts)
    values = "".join(f'<td class="num">{value}</td>' for _, value in facts)
    return (
        '<p class="explain">Degraded means confirmed worse: the lower end of the live RMSE\'s 95% '
        "bootstrap interval lies above the validation RMSE by more than the margin (default "
        f"{AccuracyPolicy().margin:.0%}).</p>"
        f'<div class="card"><table><thead><tr>{cells}</tr></thead>'
        f"<tbody><tr>{values}</tr></tbody></table></div>"
    )


# --------------------------------------------------------------------------- figures


def _new_figure(width: float = 5.6, height: float = 3.6) -> Figure:
    with matplotlib.rc_context(PLOT_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figures_html(
    panels: Sequence[tuple[Figure, str, str]],
    notes: Sequence[str] = (),
    *,
    wide: bool = False,
    half: bool = False,
) -> str:
    """Figures in the grid of plots: ``wide`` spans the page, ``half`` keeps a lone plot one column wide."""
    figures = "".join(
        f'<figure class="card">{figure_markup(fig, key)}<figcaption>{esc(caption)}</figcaption></figure>'
        for fig, key, caption in panels
    )
    note_html = "".join(f'<p class="note">{esc(note)}</p>' for note in notes)
    grid = "plots wide" if wide else "plots half" if half else "plots"
    return f'<div class="{grid}">{figures}</div>{note_html}'


def _empty(why: str) -> str:
    return f'<div class="card empty note">{esc(why)}</div>'


def _shares(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(counts, dtype=np.float64)
    total = values.sum()
    return values / total if total > 0 else np.zeros_like(values)


def _binned(values: np.ndarray, reference: Distribution) -> np.ndarray:
    """Counts of ``values`` on the reference's bins; beyond the outer edges count in the outer bins."""
    edges = np.asarray(reference.edges, dtype=np.float64)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts


def _visible_bins(edges: np.ndarray, *shares: np.ndarray, first: int, last: int) -> tuple[int, int]:
    """The bin range [lo, hi) to draw: within [first, last), trimmed to where both sides' trips are."""
    tail = (1.0 - _VISIBLE_SHARE) / 2
    lo, hi = last, first
    for share in shares:
        if share.sum() <= 0:
            continue
        cumulative = np.cumsum(share)
        lo = min(lo, int(np.searchsorted(cumulative, tail, side="right")))
        hi = max(hi, int(np.searchsorted(cumulative, 1.0 - tail, side="left")) + 1)
    lo, hi = max(lo, first), min(hi, last)
    if hi - lo < 2:
        return first, last
    return lo, hi


def _comparison_figure(
    values: np.ndarray,
    reference: Distribution,
    *,
    title: str,
    xlabel: str,
    inner: tuple[int, int],
    unit: str,
) -> tuple[Figure, str]:
    """Shares per fixed bin, reference (filled) vs window (line), over the inner (uniform-width) bins."""
    edges = np.asarray(reference.edges, dtype=np.float64)
    ref = _shares(reference.counts)
    cur = _shares(_binned(values, reference))
    lo, hi = _visible_bins(edges, ref, cur, first=inner[0], last=inner[1])
    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure()
        ax = fig.add_subplot()
        ax.stairs(
            ref[lo:hi] * 100,
            edges[lo : hi + 1],
            fill=True,
            color=GREY,
            alpha=0.3,
            linewidth=0,
            label=f"reference ({reference.n:,} trips)",
        )
        ax.stairs(ref[lo:hi] * 100, edges[lo : hi + 1], color=GREY, linewidth=0.8)
        ax.stairs(
            cur[lo:hi] * 100,
            edges[lo : hi + 1],
            color=BLUE,
            linewidth=1.5,
            label=f"this window ({values.size:,} trips)",
        )
        ax.set_xlim(edges[lo], edges[hi])
        ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of trips per bin (%)")
        ax.set_title(title)
        ax.legend(loc="best")
    below_ref, below_cur = ref[:lo].sum(), cur[:lo].sum()
    above_ref, above_cur = ref[hi:].sum(), cur[hi:].sum()
    median_ref = reference.quantiles[50] if len(reference.quantiles) > 50 else math.nan
    caption = (
        f"Same fixed bins as the drift test. Median: reference {median_ref:.2f}, "
        f"window {float(np.median(values)):.2f} {unit}. Not drawn: below {edges[lo]:g} {unit} "
        f"reference {below_ref:.1%} / window {below_cur:.1%}; above {edges[hi]:g} {unit} "
        f"reference {above_ref:.1%} / window {above_cur:.1%}."
    )
    return fig, caption


def _distributions_html(rows: _Rows, profile: ReferenceProfile) -> str:
    panels = []
    notes = []
    for values, reference, title, xlabel, unit, key, missing in (
        (rows.distance, profile.validation.distance, "Trip distance", "trip distance (miles)", "mi", "md",
         "No trip distances in this window to compare."),
        (rows.prediction, profile.scores.predictions, "Predicted duration", "predicted duration (min)", "min",
         "mp", "No predictions in this window to compare."),
    ):  # fmt: skip
        if not values.size:
            notes.append(missing)
            continue
        fig, caption = _comparison_figure(
            values,
            reference,
            title=title,
            xlabel=xlabel,
            inner=(0, _last_uniform_bin(reference.edges)),
            unit=unit,
        )
        panels.append((fig, caption, key))
    if not panels:
        return _empty("The window has no trips: nothing to compare with the reference.")
    if rows.n < DriftPolicy().min_window:
        notes.append(f"Only {rows.n:,} trips in the window: its shares per bin are noisy.")
    return _figures_html([(fig, key, caption) for fig, caption, key in panels], notes)


def _last_uniform_bin(edges: Sequence[float]) -> int:
    """Index one past the last bin as wide as the first: the coarse tail bins are reported, not drawn."""
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    same = np.isclose(widths, widths[0])
    return int(np.argmin(same)) if not same.all() else len(widths)


# --------------------------------------------------------------------------- zones


@dataclass(frozen=True)
class _ZoneShift:
    zone: np.ndarray
    reference: np.ndarray  # shares
    window: np.ndarray
    total_variation: float


def _zone_shift(ids: np.ndarray, reference_counts: Sequence[int]) -> _ZoneShift:
    ref = _shares(reference_counts)
    cur = _shares(np.bincount(ids, minlength=ref.size)[: ref.size])
    diff = cur - ref
    # Stable sort: equal moves keep zone-id order, so the page is the same every time.
    top = np.argsort(-np.abs(diff), kind="stable")[:TOP_ZONES]
    top = top[np.abs(diff[top]) > 0]
    return _ZoneShift(top, ref[top], cur[top], float(0.5 * np.abs(diff).sum()))


def _zones_html(rows: _Rows, profile: ReferenceProfile) -> str:
    if rows.pickup.size == 0 and rows.dropoff.size == 0:
        return _empty("The window has no trips with a zone id: no zone mix to compare.")
    pickup = _zone_shift(rows.pickup, profile.validation.pickup_counts)
    dropoff = _zone_shift(rows.dropoff, profile.validation.dropoff_counts)
    panels = [
        (_zone_figure(pickup, "Pickup zones"), "zp", _zone_caption(pickup, "pickup")),
        (_zone_figure(dropoff, "Dropoff zones"), "zd", _zone_caption(dropoff, "dropoff")),
    ]
    notes = []
    if rows.n < DriftPolicy().min_window:
        notes.append(f"Only {rows.n:,} trips in the window: single-zone shares are noisy.")
    return _figures_html(panels, notes) + _zone_table(pickup, dropoff)


def _zone_caption(shift: _ZoneShift, direction: str) -> str:
    return (
        f"The {TOP_ZONES} {direction} zones (TLC zone ids) whose share of trips changed most, largest "
        f"first. Total variation of the {direction}-zone mix: {shift.total_variation:.3f}."
    )


def _zone_figure(shift: _ZoneShift, title: str) -> Figure:
    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure(5.6, 3.9)
        ax = fig.add_subplot()
        if shift.zone.size:
            y = np.arange(shift.zone.size)
            height = 0.38
            ax.barh(y - height / 2, shift.reference * 100, height, color=GREY, alpha=0.45, label="reference")
            ax.barh(y + height / 2, shift.window * 100, height, color=BLUE, label="this window")
            ax.set_yticks(y, [f"zone {zone}" for zone in shift.zone.tolist()])
            ax.invert_yaxis()
            ax.grid(axis="y", visible=False)
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "no zone moved", transform=ax.transAxes, ha="center", color=GREY)
        ax.set_xlabel("share of trips (%)")
        ax.set_title(title)
    return fig


def _zone_table(pickup: _ZoneShift, dropoff: _ZoneShift) -> str:
    def cells(shift: _ZoneShift, i: int) -> str:
        if i >= shift.zone.size:
            return '<td></td><td class="num"></td><td class="num"></td><td class="num"></td>'
        change = (shift.window[i] - shift.reference[i]) * 100
        direction = "up" if change > 0 else "down"
        return (
            f"<td>{int(shift.zone[i])}</td>"
            f'<td class="num">{shift.reference[i]:.2%}</td>'
            f'<td class="num">{shift.window[i]:.2%}</td>'
            f'<td class="num {direction}">{change:+.2f} pp</td>'
        )

    body = "".join(
        f"<tr>{cells(pickup, i)}{cells(dropoff, i)}</tr>"
        for i in range(max(pickup.zone.size, dropoff.zone.size))
    )
    if not body:
        return ""
    head = (
        '<th>{} zone</th><th class="num">Reference</th><th class="num">Window</th><th class="num">Change</th>'
    )
    return (
        '<div class="card spaced"><table>'
        f"<thead><tr>{head.format('Pickup')}{head.format('Dropoff')}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- accuracy over time


@dataclass(frozen=True)
class _Point:
    at: np.datetime64  # naive UTC
    rmse: float
    low: float
    high: float
    same_version: bool


def _moment(text: object) -> np.datetime64 | None:
    """A window bound (ISO 8601; naive means UTC) as naive UTC, or None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        return None
    if stamp is pd.NaT:
        return None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return np.datetime64(stamp.tz_localize(None).as_unit("ns").to_datetime64())


def _verdict_point(verdict: Mapping[str, Any], version: str, fallback: np.datetime64 | None) -> _Point | None:
    accuracy = _mapping(verdict.get("accuracy"))
    rmse = _number(accuracy.get("rmse"))
    at = _moment(_mapping(verdict.get("window")).get("end")) or fallback
    if at is None or not math.isfinite(rmse):
        return None
    low, high = _interval(accuracy)
    if not (math.isfinite(low) and math.isfinite(high)):
        low = high = rmse
    return _Point(at, rmse, low, high, str(verdict.get("model_version", "")) == version)


def _same_verdict(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("model_version", "evaluated_at", "window")
    return all(a.get(key) == b.get(key) for key in keys)


def _accuracy_over_time_html(
    document: Mapping[str, Any],
    rows: _Rows,
    profile: ReferenceProfile,
    history: Sequence[Mapping[str, Any]],
) -> str:
    version = str(document.get("model_version", ""))
    earlier = [
        point
        for verdict in history
        if isinstance(verdict, Mapping) and not _same_verdict(verdict, document)
        for point in [_verdict_point(verdict, version, None)]
        if point is not None
    ]
    current = _verdict_point(document, version, rows.latest_event)
    daily = _daily_rmse(rows)
    notes = []
    if rows.labelled == 0:
        notes.append("No labelled trips in this window yet, so no RMSE per day.")
    elif not rows.has_event_time:
        notes.append("The window has no event times, so its labelled trips cannot be split by day.")
    elif not daily.drawn.any():
        notes.append(
            f"No day of this window has {MIN_LABELS_PER_DAY} labelled trips or more, so no RMSE per day."
        )
    elif (~daily.drawn).any():
        left_out = int((~daily.drawn).sum())
        notes.append(f"{left_out} day(s) with fewer than {MIN_LABELS_PER_DAY} labelled trips are not drawn.")
    if not daily.drawn.any() and not earlier and current is None:
        return _empty(" ".join([*notes, "No earlier verdict with a live RMSE either: nothing to draw yet."]))
    fig = _accuracy_figure(daily, earlier, current, profile.scores.rmse)
    this_window = ", this window's" if current is not None else ""
    caption = (
        f"RMSE of the labelled trips per UTC day of event time (days with at least {MIN_LABELS_PER_DAY} "
        f"labels; grey bars: labelled trips per day), the live RMSE of {len(earlier)} earlier stored "
        f"verdict(s) at their window end{this_window}, against the version's validation RMSE."
    )
    return _figures_html([(fig, "at", caption)], notes, wide=True)


@dataclass(frozen=True)
class _Daily:
    days: np.ndarray  # noon of each UTC day with labelled trips (datetime64[ns])
    rmse: np.ndarray
    count: np.ndarray

    @property
    def drawn(self) -> np.ndarray:
        return self.count >= MIN_LABELS_PER_DAY


def _accuracy_figure(daily: _Daily, earlier: list[_Point], current: _Point | None, baseline: float) -> Figure:
    verdicts = [*earlier, *([current] if current is not None else [])]
    drawn = daily.drawn
    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure(11.4, 3.8)
        ax = fig.add_subplot()
        handles: list[Any] = []
        if daily.days.size:
            counts_ax = ax.twinx()
            handles.append(
                counts_ax.bar(
                    daily.days,
                    daily.count,
                    width=0.8,
                    color=_BAR,
                    edgecolor=_LIGHT,
                    linewidth=0.4,
                    label="labelled trips per day (right axis)",
                )
            )
            counts_ax.set_ylabel("labelled trips per day")
            counts_ax.grid(visible=False)
            counts_ax.spines["right"].set_visible(True)
            # The RMSE axis on top of the bars, with a transparent background.
            ax.set_zorder(counts_ax.get_zorder() + 1)
            ax.patch.set_visible(False)
        ax.axhline(
            baseline, color=RED, linewidth=1.2, linestyle="--", label=f"validation RMSE {baseline:.3f}"
        )
        if drawn.any():
            ax.plot(
                daily.days[drawn],
                daily.rmse[drawn],
                color=BLUE,
                linewidth=1.4,
                marker="o",
                markersize=3.5,
                label="RMSE per day (this window)",
            )
        for points, color, label, marker in (
            ([p for p in earlier if p.same_version], _AMBER, "earlier windows (this version)", "s"),
            ([p for p in earlier if not p.same_version], _LIGHT, "earlier windows (other versions)", "s"),
            ([current] if current is not None else [], "#111827", "this window", "D"),
        ):
            if points:
                rmse = np.array([p.rmse for p in points])
                spread = np.array([[p.rmse - p.low for p in points], [p.high - p.rmse for p in points]])
                ax.errorbar(
                    np.array([p.at for p in points], dtype="datetime64[ns]"),
                    rmse,
                    yerr=np.nan_to_num(np.abs(spread)),
                    fmt=marker,
                    color=color,
                    markersize=5,
                    capsize=2.5,
                    linewidth=1.0,
                    label=f"{label}: RMSE at its end, 95% interval",
                )
        # Half a day beyond the outermost day or verdict, so a one-day window still shows whole bars.
        moments = np.concatenate([daily.days, np.array([p.at for p in verdicts], dtype="datetime64[ns]")])
        ax.set_xlim(moments.min() - _HALF_DAY, moments.max() + _HALF_DAY)
        locator = mdates.AutoDateLocator(minticks=3, maxticks=10)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        # Room above the highest point and the baseline, so neither sits on the frame.
        highest = [baseline, *daily.rmse[drawn], *(p.high for p in verdicts)]
        ax.set_ylim(0, max(v for v in highest if math.isfinite(v)) * 1.15)
        ax.set_xlabel("event time (UTC)")
        ax.set_ylabel("RMSE (min)")
        ax.set_title("Live RMSE against the validation RMSE")
        rmse_handles, _ = ax.get_legend_handles_labels()
        handles = rmse_handles + handles
        # Below the plot: inside, it would cover the days it explains.
        fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncols=3, fontsize=8)
    return fig


def _daily_rmse(rows: _Rows) -> _Daily:
    """RMSE and labelled trips per UTC day of event time, over every labelled trip at once."""
    known = ~np.isnat(rows.day)
    if not known.any():
        return _Daily(np.empty(0, dtype="datetime64[ns]"), np.empty(0), np.empty(0))
    days, index = np.unique(rows.day[known], return_inverse=True)
    squared = (rows.predicted[known] - rows.actual[known]) ** 2
    count = np.bincount(index, minlength=days.size).astype(np.float64)
    rmse = np.sqrt(np.bincount(index, weights=squared, minlength=days.size) / count)
    # Bars and points sit at noon, the middle of their day.
    return _Daily(days + _HALF_DAY, rmse, count)


# --------------------------------------------------------------------------- residuals


def _residuals_html(rows: _Rows, profile: ReferenceProfile) -> str:
    if rows.labelled == 0:
        return _empty(
            "No labelled trips in this window: the residual (predicted \u2212 actual) distribution needs "
            "the trips' actual durations, joined by taxi-mlops labels once the month's TLC file lands."
        )
    reference = profile.scores.residuals
    residual = rows.predicted - rows.actual
    edges = reference.edges
    # The residual bins are 2 min wide between two open-ended tail bins.
    fig, caption = _comparison_figure(
        residual,
        reference,
        title="Residual distribution",
        xlabel="residual: predicted \u2212 actual (min)",
        inner=(1, len(edges) - 2),
        unit="min",
    )
    notes = []
    if rows.labelled < AccuracyPolicy().min_labelled:
        notes.append(f"Only {rows.labelled:,} labelled trips: the window's shares per bin are noisy.")
    caption = (
        f"{caption} Mean residual in the window: {float(residual.mean()):+.2f} min (positive: the model "
        "predicts longer trips than they were)."
    )
    return _figures_html([(fig, "rr", caption)], notes, half=True)
