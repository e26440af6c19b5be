"""The autopilot replay's timeline as one self-contained HTML page: what the loop did, and whether it paid.

The replay (``taxi-mlops autopilot --replay``) writes a timeline document -- its
settings, every decision in event-time order, the served RMSE per ISO week beside the
two baselines measured on the same trips, the monitor's windows, the alerts and a
summary. This page renders it for a person (and for the README's picture):

* a headline: the three RMSEs over the whole replay and after the promotion, the days
  from the shift to the promotion, and one sentence counting what the loop did;
* the weekly RMSE of the served model against never-retrain and the monthly schedule,
  with every retrain / gate / canary step / promote / rollback marked at its event time;
* the monitor's windows on the same time axis -- drift score against its line of 1, the
  live RMSE against the champion's validation RMSE -- so a marker in the first plot lines
  up with the verdicts that caused it in the second;
* the decisions, with runs of identical "not retraining" checks folded into one row, and
  the alerts.

The same constraints as the other reports (``components/html_report/page.py``): one
string, no scripts or external resources, plot text as SVG paths, figures made with the
Figure API and an Agg canvas (never ``pyplot``). Reasons, versions and settings come from
the replay's inputs, so every interpolated string goes through :func:`esc` and CSS
classes come from fixed sets, never from the document. Output is deterministic: no
clocks, fixed SVG id salts, input order kept. A document with missing keys or empty lists
still renders, each empty section saying so.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import matplotlib
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

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

_DAY: Final = 86_400.0
_HALF_WEEK: Final = pd.Timedelta(days=3.5)
_WEEK: Final = pd.Timedelta(days=7)

#: Both timeline figures: one width and fixed margins, so their x axes line up on the page.
_FIG_WIDTH: Final = 11.4
_LEFT: Final = 0.07
_RIGHT: Final = 0.985

_SCHEDULED: Final = "#b45309"
_GREEN: Final = "#16a34a"
_BAND: Final = "#dcfce7"


@dataclass(frozen=True)
class _Marker:
    """How one kind of event is drawn: a vertical line with a symbol on top, and its legend name."""

    label: str
    color: str
    linestyle: Any
    linewidth: float
    symbol: str
    size: float


#: Marker styles by event key (a decision kind, with the gate split into passed and refused).
_MARKERS: Final[Mapping[str, _Marker]] = {
    "retrain": _Marker("retrain started", "#7c3aed", (0, (1.5, 2)), 1.3, "v", 6.5),
    "gate_passed": _Marker("gate passed", "#0d9488", (0, (5, 2)), 1.1, "D", 5.0),
    "gate_refused": _Marker("gate refused", "#ea580c", (0, (5, 2)), 1.1, "X", 6.5),
    "canary_step": _Marker("canary step", "#94a3b8", "-", 0.8, "|", 7.0),
    "promote": _Marker("promoted", _GREEN, "-", 2.0, "^", 7.5),
    "rollback": _Marker("rolled back", RED, "-", 2.0, "X", 7.5),
}

#: Monitor verdicts: (CSS class and colour key, label). ``insufficient_data`` is the monitor's own word.
_VERDICTS: Final[Mapping[str, tuple[str, str]]] = {
    "ok": ("ok", "ok"),
    "drift": ("drift", "drift"),
    "degraded": ("degraded", "degraded"),
    "insufficient": ("insufficient", "insufficient data"),
    "insufficient_data": ("insufficient", "insufficient data"),
}
_VERDICT_COLORS: Final[Mapping[str, str]] = {
    "ok": "#17b26a",
    "drift": "#f79009",
    "degraded": "#f04438",
    "insufficient": "#98a2b3",
    "unknown": "#475467",
}

#: What a retraining trigger is called in the headline.
_TRIGGER_TEXT: Final[Mapping[str, str]] = {
    "degraded": "accuracy decay",
    "drift": "drift",
    "age": "model age",
    "requested": "request",
    "schedule": "schedule",
}

#: Where each kind's symbol sits along the top of the weekly plot (axes fraction), one lane per stage.
_LANES: Final[Mapping[str, float]] = {
    "retrain": 0.955,
    "gate_passed": 0.905,
    "gate_refused": 0.905,
    "canary_step": 0.855,
    "promote": 0.955,
    "rollback": 0.955,
}
#: The weekly plot's data stay below this share of its height, under the lanes.
_DATA_TOP: Final = 0.8

_NUMBERS: Final = re.compile(r"\d+(?:\.\d+)?")

_TIMELINE_CSS: Final = """\
.headline { padding: 16px 20px; }
.headline .story { font-size: 16px; margin: 0 0 14px; color: #111827; }
.headline .story b { font-weight: 650; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 0 0 14px; }
.tile { flex: 1 1 170px; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 14px;
  background: #fafafa; }
.tile .label { font-size: 12px; color: #6b7280; text-transform: uppercase; letter-spacing: .04em; }
.tile .value { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; color: #111827; }
.tile .value small { font-size: 13px; font-weight: 500; color: #6b7280; }
.tile .sub { font-size: 12.5px; color: #4b5563; }
.tile.served { border-left: 4px solid #2563eb; }
.tile.never { border-left: 4px solid #6b7280; }
.tile.scheduled { border-left: 4px solid #b45309; }
.tile.shift { border-left: 4px solid #16a34a; }
.better { color: #15803d; font-weight: 600; }
.worse { color: #b42318; font-weight: 600; }
td.best { font-weight: 700; color: #111827; }
.scores th:first-child, .scores td:first-child { width: 34%; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
  white-space: nowrap; border: 1px solid transparent; }
.badge.retrain { background: #ede9fe; color: #5b21b6; border-color: #ddd6fe; }
.badge.no_retrain { background: #f3f4f6; color: #4b5563; border-color: #e5e7eb; }
.badge.gate_passed { background: #ccfbf1; color: #115e59; border-color: #99f6e4; }
.badge.gate_refused { background: #ffedd5; color: #9a3412; border-color: #fed7aa; }
.badge.canary_step { background: #f1f5f9; color: #334155; border-color: #cbd5e1; }
.badge.promote { background: #16a34a; color: #fff; }
.badge.rollback { background: #dc2626; color: #fff; }
.badge.unknown { background: #fff; color: #374151; border-color: #9ca3af; }
.count { display: inline-block; margin-left: 6px; font-size: 12px; color: #6b7280; font-weight: 600; }
.decisions td.when { white-space: nowrap; color: #374151; font-size: 13px; }
.decisions td.when .span { display: block; color: #6b7280; font-size: 12px; }
.decisions td.reason { overflow-wrap: anywhere; }
.decisions td.facts { white-space: nowrap; color: #4b5563; font-size: 12.5px; }
.decisions tr.folded td { background: #fafafa; color: #4b5563; }
.decisions tr.major td { background: #f0fdf4; }
.decisions tr.bad td { background: #fef2f2; }
details { margin-top: 4px; }
summary { cursor: pointer; color: #6b7280; font-size: 12.5px; }
details ol { margin: 6px 0 0; padding-left: 20px; font-size: 12.5px; color: #4b5563; }
.plots.wide { grid-template-columns: 1fr; }
.empty { padding: 14px 18px; color: #4b5563; }
.settings td:first-child { width: 28%; }
"""
_CSS: Final = PAGE_CSS + TABLE_CSS + FIGURE_CSS + _TIMELINE_CSS


def render_timeline_report(timeline: Mapping[str, Any]) -> str:
    """The replay's ``timeline`` document (see the module docstring) as one self-contained HTML page."""
    replay = _mapping(timeline.get("replay"))
    decisions = [_Decision.of(raw) for raw in _records(timeline.get("decisions"))]
    weekly = [_Week.of(raw) for raw in _records(timeline.get("weekly"))]
    weekly = [week for week in weekly if week is not None]
    monitor = [_Window.of(raw) for raw in _records(timeline.get("monitor"))]
    alerts = list(_records(timeline.get("alerts")))
    summary = _mapping(timeline.get("summary"))
    span = _time_span(decisions, weekly, monitor, alerts)
    after = _mapping(summary.get("after_promotion"))
    since = _moment(after.get("since"))

    body = [
        f"<h1>{esc(_title(replay))}</h1>",
        _context_html(replay),
        _headline_html(decisions, weekly, summary),
        "<h2>Served RMSE per week against the baselines</h2>",
        _weekly_html(weekly, decisions, span, since),
        "<h2>What the monitor saw</h2>",
        _monitor_html(monitor, decisions, span),
        "<h2>Decisions</h2>",
        _decisions_html(decisions),
    ]
    if alerts:
        body += ["<h2>Alerts</h2>", _alerts_html(alerts)]
    if weekly:
        body += ["<h2>Weeks</h2>", _weeks_table(weekly)]
    if replay:
        body += ["<h2>Replay settings</h2>", _settings_html(replay)]
    return html_document(_title(replay), _CSS, body)


# --------------------------------------------------------------------------- reading the document


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _records(value: object) -> Iterable[Mapping[str, Any]]:
    """The mappings in a list (anything else is not a record and is skipped)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [item for item in value if isinstance(item, Mapping)]
    return []


def _number(value: object) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _moment(value: object) -> pd.Timestamp | None:
    """An ISO 8601 time as a naive UTC timestamp (naive input is event time, taken as is); None if not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if stamp is pd.NaT or pd.isna(stamp):
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def _shown_time(value: object) -> str:
    """A time as the table shows it: minutes precision when it parses, the text itself otherwise."""
    stamp = _moment(value)
    if stamp is None:
        return str(value) if value not in (None, "") else "n/a"
    return stamp.strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class _Decision:
    raw: Mapping[str, Any]
    kind: str
    at: pd.Timestamp | None

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> _Decision:
        return cls(raw, str(raw.get("kind", "")), _moment(raw.get("event_time")))

    @property
    def key(self) -> str:
        """The marker and badge key: the kind, with the gate split by its verdict; ``unknown`` otherwise."""
        if self.kind == "gate":
            return "gate_passed" if self.raw.get("passed") is True else "gate_refused"
        return self.kind if self.kind in _MARKERS or self.kind == "no_retrain" else "unknown"

    @property
    def reason(self) -> str:
        return str(self.raw.get("reason", "") or "")

    @property
    def version(self) -> str:
        value = self.raw.get("model_version")
        return "" if value is None else str(value)


@dataclass(frozen=True)
class _Week:
    monday: pd.Timestamp
    trips: float
    served: float
    never: float
    scheduled: float

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> _Week | None:
        monday = _moment(raw.get("week"))
        if monday is None:
            return None
        return cls(
            monday,
            _number(raw.get("trips")),
            _number(raw.get("served_rmse")),
            _number(raw.get("never_retrain_rmse")),
            _number(raw.get("scheduled_rmse")),
        )


@dataclass(frozen=True)
class _Window:
    at: pd.Timestamp | None
    verdict: str  # a _VERDICT_COLORS key
    rmse: float
    baseline: float
    drift: float
    zones: float  # the by-zone error statistic over its threshold (components/monitoring/segments.py)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> _Window:
        at = _moment(raw.get("event_time")) or _moment(raw.get("window_end"))
        verdict = _VERDICTS.get(str(raw.get("verdict", "")), ("unknown", ""))[0]
        return cls(
            at,
            verdict,
            _number(raw.get("rmse")),
            _number(raw.get("baseline_rmse")),
            _number(raw.get("drift_score")),
            _number(raw.get("zone_score")),
        )


@dataclass(frozen=True)
class _Span:
    """The event-time range both timeline figures show (None when nothing has a time)."""

    start: pd.Timestamp | None
    end: pd.Timestamp | None

    @property
    def known(self) -> bool:
        return self.start is not None and self.end is not None

    def limits(self) -> tuple[float, float]:
        assert self.start is not None and self.end is not None
        pad = max((self.end - self.start) * 0.015, pd.Timedelta(hours=12))
        return float(mdates.date2num(self.start - pad)), float(mdates.date2num(self.end + pad))


def _time_span(
    decisions: Sequence[_Decision],
    weekly: Sequence[_Week],
    monitor: Sequence[_Window],
    alerts: Sequence[Mapping[str, Any]],
) -> _Span:
    moments = [d.at for d in decisions] + [w.at for w in monitor]
    moments += [_moment(a.get("event_time")) for a in alerts]
    moments += [w.monday for w in weekly] + [w.monday + _WEEK for w in weekly]
    known = [m for m in moments if m is not None]
    return _Span(min(known), max(known)) if known else _Span(None, None)


# --------------------------------------------------------------------------- title, context, headline


def _title(replay: Mapping[str, Any]) -> str:
    months = [str(m) for m in replay["months"]] if _listish(replay) else []
    parts = ["Autopilot replay"]
    if months:
        parts.append(months[0] if len(months) == 1 else f"{months[0]} \u2013 {months[-1]}")
    if replay.get("color"):
        parts.append(f"{replay['color']} taxis")
    return " \u00b7 ".join(parts)


def _listish(replay: Mapping[str, Any]) -> bool:
    months = replay.get("months")
    return isinstance(months, Sequence) and not isinstance(months, str | bytes)


def _context_html(replay: Mapping[str, Any]) -> str:
    items = []
    if replay.get("started_from") is not None:
        items.append(f"<span>first model trained on <b>{esc(replay['started_from'])}</b></span>")
    if _listish(replay) and replay.get("months"):
        months = ", ".join(str(m) for m in replay["months"])
        items.append(f"<span>replayed as live traffic: <b>{esc(months)}</b></span>")
    delay = _number(replay.get("label_delay_hours"))
    if math.isfinite(delay):
        items.append(f"<span>labels land <b>{fmt(delay, 'g')} h</b> after each trip</span>")
    if replay.get("data_dir") is not None:
        items.append(f"<span>data <code>{esc(replay['data_dir'])}</code></span>")
    if not items:
        return '<p class="context">The timeline names no replay settings.</p>'
    return f'<p class="context">{"".join(items)}</p>'


def _story(decisions: Sequence[_Decision], weeks: int) -> str:
    """One sentence of what the loop did, counted from its decisions (HTML, numbers only interpolated)."""
    retrains = [d for d in decisions if d.kind == "retrain"]
    checks = sum(1 for d in decisions if d.kind == "no_retrain")
    promoted = sum(1 for d in decisions if d.kind == "promote")
    rolled = sum(1 for d in decisions if d.kind == "rollback")
    refused = sum(1 for d in decisions if d.key == "gate_refused")
    if not decisions:
        return "No decisions recorded: the loop has not checked anything yet."
    over = f"Over {weeks} week{'s' if weeks != 1 else ''} of event time, " if weeks else ""
    checked = f"{checks} check{'s' if checks != 1 else ''} decided not to retrain"
    if not retrains:
        serving = "the first model served throughout" if not promoted else f"{promoted} promotion(s)"
        return f"{over}the loop never retrained: {checked}, and {serving}."
    outcomes = [f"{promoted} promoted", f"{rolled} rolled back"]
    if refused:
        outcomes.append(f"{refused} refused by the gate")
    pending = len(retrains) - promoted - rolled - refused
    if pending > 0:
        outcomes.append(f"{pending} without an outcome yet")
    triggers: dict[str, int] = {}
    for decision in retrains:
        trigger = decision.raw.get("trigger")
        name = _TRIGGER_TEXT.get(str(trigger), str(trigger)) if trigger else "unnamed trigger"
        triggers[name] = triggers.get(name, 0) + 1
    why = ", ".join(f"{esc(name)} \u00d7{count}" for name, count in triggers.items())
    count = len(retrains)
    return (
        f"{over}<b>{count} retraining{'s' if count != 1 else ''}</b> ({', '.join(outcomes)}), "
        f"triggered by {why}; {checked}."
    )


def _rmse_summary(summary: Mapping[str, Any], weekly: Sequence[_Week]) -> tuple[Mapping[str, Any], bool]:
    """The whole replay's RMSEs: the summary's, or pooled from the weeks when it has none (and says so)."""
    if any(math.isfinite(_number(summary.get(k))) for k in ("served_rmse", "never_retrain_rmse")):
        return summary, False
    trips = np.array([w.trips for w in weekly], dtype=np.float64)
    if not weekly or not np.isfinite(trips).all() or trips.sum() <= 0:
        return {}, False
    pooled: dict[str, Any] = {"trips": float(trips.sum())}
    for name, values in (
        ("served_rmse", [w.served for w in weekly]),
        ("never_retrain_rmse", [w.never for w in weekly]),
        ("scheduled_rmse", [w.scheduled for w in weekly]),
    ):
        # A week's RMSE squared times its trips is its sum of squared errors: pooling is exact.
        pooled[name] = float(np.sqrt(np.sum(trips * np.square(values)) / trips.sum()))
    return pooled, True


def _change(served: float, baseline: float) -> str:
    """``served`` relative to ``baseline`` as a signed percentage, coloured (lower RMSE is better)."""
    if not (math.isfinite(served) and math.isfinite(baseline)) or baseline == 0:
        return "n/a"
    change = (served - baseline) / baseline
    css = "better" if change < 0 else "worse" if change > 0 else ""
    return f'<span class="{css}">{change:+.1%}</span>'


def _headline_html(
    decisions: Sequence[_Decision], weekly: Sequence[_Week], summary: Mapping[str, Any]
) -> str:
    scores, pooled = _rmse_summary(summary, weekly)
    after = _mapping(summary.get("after_promotion"))
    served = _number(scores.get("served_rmse"))
    never = _number(scores.get("never_retrain_rmse"))
    scheduled = _number(scores.get("scheduled_rmse"))
    story = f'<p class="story">{_story(decisions, len(weekly))}</p>'
    if not any(math.isfinite(v) for v in (served, never, scheduled)):
        return (
            f'<section class="card headline">{story}<p class="note">No RMSE yet: the timeline scores no '
            "labelled trips, so the served model cannot be compared with the baselines.</p></section>"
        )
    tiles = [
        (
            "served",
            "Served model",
            served,
            f"{_change(served, never)} vs never retrain \u00b7 {_change(served, scheduled)} vs scheduled",
        ),
        ("never", "Never retrain", never, "the first model, forever"),
        ("scheduled", "Scheduled", scheduled, "retrained at each month's start"),
    ]
    markup = [
        f'<div class="tile {css}"><div class="label">{label} RMSE</div>'
        f'<div class="value">{fmt(value, ".3f")} <small>min</small></div><div class="sub">{sub}</div></div>'
        for css, label, value, sub in tiles
    ]
    days = _number(summary.get("shift_to_promotion_days"))
    if math.isfinite(days):
        markup.append(
            '<div class="tile shift"><div class="label">Shift to promotion</div>'
            f'<div class="value">{fmt(days, ".1f")} <small>days</small></div>'
            '<div class="sub">of event time, from the shift\'s start</div></div>'
        )
    rows = [_score_row("Whole replay", scores)]
    if after:
        rows.append(_score_row(f"After the promotion (since {_shown_time(after.get('since'))})", after))
    else:
        rows.append(
            "<tr><td>After the promotion</td>"
            '<td colspan="6" class="note">no promotion during the replay</td></tr>'
        )
    head = (
        "<tr><th>RMSE (min) on the same labelled trips</th><th class='num'>trips</th>"
        "<th class='num'>served</th><th class='num'>never retrain</th><th class='num'>scheduled</th>"
        "<th class='num'>served vs never</th><th class='num'>served vs scheduled</th></tr>"
    )
    note = (
        '<p class="note">No summary in the timeline: the whole replay\'s RMSEs are pooled from the weeks.</p>'
        if pooled
        else ""
    )
    return (
        f'<section class="card headline">{story}'
        f'<div class="tiles">{"".join(markup)}</div>'
        f'<table class="scores"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>{note}'
        "</section>"
    )


def _score_row(label: str, scores: Mapping[str, Any]) -> str:
    values = [_number(scores.get(k)) for k in ("served_rmse", "never_retrain_rmse", "scheduled_rmse")]
    finite = [v for v in values if math.isfinite(v)]
    best = min(finite) if finite else math.nan
    cells = "".join(
        f'<td class="num{" best" if value == best else ""}">{fmt(value, ".3f")}</td>' for value in values
    )
    return (
        f"<tr><td>{esc(label)}</td><td class='num'>{fmt(scores.get('trips'), ',.0f')}</td>{cells}"
        f"<td class='num'>{_change(values[0], values[1])}</td>"
        f"<td class='num'>{_change(values[0], values[2])}</td></tr>"
    )


# --------------------------------------------------------------------------- figures


def _new_figure(height: float) -> Figure:
    with matplotlib.rc_context(PLOT_RC):
        fig = Figure(figsize=(_FIG_WIDTH, height))
    FigureCanvasAgg(fig)
    return fig


def _figure_html(fig: Figure, key: str, caption: str) -> str:
    return (
        '<div class="plots wide"><figure class="card">'
        f"{figure_markup(fig, key)}<figcaption>{esc(caption)}</figcaption></figure></div>"
    )


def _empty(why: str) -> str:
    return f'<div class="card empty note">{esc(why)}</div>'


def _date_axis(ax: Axes, span: _Span) -> None:
    ax.xaxis_date()
    ax.set_xlim(*span.limits())
    locator = mdates.AutoDateLocator(minticks=4, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    # The year goes in the axis label: the formatter's offset text would sit apart in a corner.
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=False))
    assert span.start is not None and span.end is not None
    years = " \u2013 ".join(str(year) for year in sorted({span.start.year, span.end.year}))
    ax.set_xlabel(f"event time ({years})")


def _mark_events(ax: Axes, decisions: Sequence[_Decision], *, symbols: bool) -> list[str]:
    """A vertical line per event; with ``symbols`` also its symbol in its kind's lane along the top edge
    (events an hour apart would hide each other's symbols in one lane) and the version a promotion or
    rollback concerns. Returns the marker keys drawn, in legend order."""
    drawn: list[str] = []
    along_x = ax.get_xaxis_transform()
    for decision in decisions:
        if decision.at is None or decision.key not in _MARKERS:
            continue
        style = _MARKERS[decision.key]
        x = float(mdates.date2num(decision.at))
        ax.axvline(
            x,
            color=style.color,
            linestyle=style.linestyle,
            linewidth=style.linewidth,
            alpha=0.85 if symbols else 0.45,
            zorder=1,
        )
        if symbols:
            ax.plot(
                [x],
                [_LANES[decision.key]],
                marker=style.symbol,
                markersize=style.size,
                color=style.color,
                markeredgewidth=1.6 if style.symbol == "|" else 0.6,
                markeredgecolor=style.color if style.symbol == "|" else "white",
                transform=along_x,
                clip_on=False,
                zorder=5,
            )
            if decision.key in ("promote", "rollback"):
                what = "promoted" if decision.key == "promote" else "rolled back"
                ax.annotate(
                    f"v{decision.version} {what}" if decision.version else what,
                    xy=(x, _LANES[decision.key]),
                    xycoords=along_x,
                    xytext=(6, 0),
                    textcoords="offset points",
                    color=style.color,
                    fontsize=8,
                    fontweight="bold",
                    va="center",
                    ha="left",
                    parse_math=False,  # a version is text from the document, never mathtext
                    zorder=4,
                    bbox={
                        "boxstyle": "round,pad=0.15",
                        "facecolor": "white",
                        "edgecolor": "none",
                        "alpha": 0.85,
                    },
                )
        if decision.key not in drawn:
            drawn.append(decision.key)
    return [key for key in _MARKERS if key in drawn]


def _marker_handles(keys: Sequence[str]) -> list[Line2D]:
    return [
        Line2D(
            [],
            [],
            color=_MARKERS[key].color,
            linestyle=_MARKERS[key].linestyle,
            linewidth=_MARKERS[key].linewidth,
            marker=_MARKERS[key].symbol,
            markersize=_MARKERS[key].size * 0.85,
            markeredgecolor=_MARKERS[key].color if _MARKERS[key].symbol == "|" else "white",
            markeredgewidth=1.4 if _MARKERS[key].symbol == "|" else 0.6,
            label=_MARKERS[key].label,
        )
        for key in keys
    ]


def _weekly_html(
    weekly: Sequence[_Week], decisions: Sequence[_Decision], span: _Span, since: pd.Timestamp | None
) -> str:
    if not weekly:
        return _empty(
            "No weekly RMSE in the timeline: no replayed week had labelled trips yet, so there is nothing "
            "to compare the served model with the baselines on."
        )
    caption = (
        "Each point is one ISO week's RMSE (minutes) over its labelled trips, drawn at the middle of the "
        "week; the three lines are scored on the same trips and differ only by the model that answered: "
        "the served model (whatever the loop had deployed), the first model forever, and a model "
        "retrained at each month's start on the previous month. Vertical lines mark the loop's decisions "
        "at their event time"
        + (", the shaded band the time after the promotion." if since is not None else ".")
    )
    return _figure_html(_weekly_figure(weekly, decisions, span, since), "weekly", caption)


def _weekly_figure(
    weekly: Sequence[_Week], decisions: Sequence[_Decision], span: _Span, since: pd.Timestamp | None
) -> Figure:
    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure(4.4)
        fig.subplots_adjust(left=_LEFT, right=_RIGHT, top=0.91, bottom=0.27)
        ax = fig.add_subplot()
        middle = np.array([mdates.date2num(w.monday + _HALF_WEEK) for w in weekly])
        handles: list[Any] = []
        if since is not None:
            end = span.limits()[1]
            start = float(mdates.date2num(since))
            ax.axvspan(start, max(end, start), color=_BAND, alpha=0.55, linewidth=0, zorder=0)
            handles.append(Patch(color=_BAND, alpha=0.8, label="after the promotion"))
        keys = _mark_events(ax, decisions, symbols=True)
        lines = [
            ("served model", [w.served for w in weekly], BLUE, "-", 2.2, "o", 4.5, 4),
            ("never retrain", [w.never for w in weekly], GREY, (0, (5, 3)), 1.5, "s", 3.2, 3),
            (
                "scheduled (monthly)",
                [w.scheduled for w in weekly],
                _SCHEDULED,
                (0, (6, 2, 1.5, 2)),
                1.5,
                "^",
                3.8,
                3,
            ),
        ]
        for label, values, color, style, width, marker, size, order in lines:
            ax.plot(
                middle,
                values,
                color=color,
                linestyle=style,
                linewidth=width,
                marker=marker,
                markersize=size,
                label=label,
                zorder=order,
            )
        _date_axis(ax, span)
        finite = [v for w in weekly for v in (w.served, w.never, w.scheduled) if math.isfinite(v)]
        if finite:
            low, high = min(finite), max(finite)
            bottom = max(0.0, low - max((high - low) * 0.12, 0.03 * high, 0.05))
            # Headroom: the lines end at _DATA_TOP of the height, the decision symbols' lanes above them.
            ax.set_ylim(bottom, bottom + (high - bottom) / _DATA_TOP)
        ax.set_ylabel("RMSE per week (min)")
        ax.set_title("Weekly RMSE: the served model against never retraining and the monthly schedule")
        line_handles, _ = ax.get_legend_handles_labels()
        # Two rows: what the lines are, then what the markers are.
        for items, y in ((line_handles + handles, 0.06), (_marker_handles(keys), 0.0)):
            if items:
                fig.legend(
                    items,
                    [h.get_label() for h in items],
                    loc="lower center",
                    bbox_to_anchor=(0.5 * (_LEFT + _RIGHT), y),
                    ncols=len(items),
                    fontsize=8.5,
                    handlelength=2.6,
                )
    return fig


def _monitor_html(monitor: Sequence[_Window], decisions: Sequence[_Decision], span: _Span) -> str:
    timed = [w for w in monitor if w.at is not None]
    if not timed:
        return _empty(
            "No monitor windows in the timeline: the monitor judged no window of replayed traffic, so "
            "there is no drift score or live RMSE to show."
        )
    caption = (
        "Each point is one monitor window, at the event time it was judged, coloured by its verdict. Top: "
        "the drift score, the largest feature effect as a multiple of the smallest effect that matters "
        "(at or above 1: drifted by effect size), and the by-zone score (purple): how far the errors moved "
        "in some pickup zones against the rest, over its limit (at or above 1: decay a retraining can fix). "
        "Bottom: the window's live RMSE on its labelled trips "
        "against the serving model's validation RMSE. Same time axis and decision lines as above."
    )
    return _figure_html(_monitor_figure(timed, decisions, span), "monitor", caption)


def _monitor_figure(windows: Sequence[_Window], decisions: Sequence[_Decision], span: _Span) -> Figure:
    x = np.array([mdates.date2num(w.at) for w in windows])
    drift = np.array([w.drift for w in windows])
    rmse = np.array([w.rmse for w in windows])
    baseline = np.array([w.baseline for w in windows])
    verdicts = [w.verdict for w in windows]
    with matplotlib.rc_context(PLOT_RC):
        fig = _new_figure(5.2)
        fig.subplots_adjust(left=_LEFT, right=_RIGHT, top=0.92, bottom=0.18, hspace=0.22)
        top, bottom = fig.subplots(2, 1, sharex=True)
        for ax in (top, bottom):
            _mark_events(ax, decisions, symbols=False)
        has_drift = np.isfinite(drift)
        if has_drift.any():
            top.plot(x[has_drift], drift[has_drift], color="#d0d5dd", linewidth=1.0, zorder=2)
            _verdict_points(top, x, drift, verdicts)
            top.set_ylim(0, max(1.6, float(np.nanmax(drift)) * 1.12))
        else:
            top.text(0.5, 0.5, "no drift scores", transform=top.transAxes, ha="center", color=GREY)
            top.set_ylim(0, 1.6)
        zones = np.array([w.zones for w in windows])
        has_zones = np.isfinite(zones)
        if has_zones.any():
            top.plot(
                x[has_zones], zones[has_zones], color="#7c3aed", linewidth=1.1, marker="D", markersize=2.6,
                label="by-zone score", zorder=3,
            )  # fmt: skip
            top.set_ylim(0, max(top.get_ylim()[1], float(np.nanmax(zones)) * 1.12))
            top.legend(loc="upper left", fontsize=7.5, frameon=False)
        top.axhline(1.0, color=RED, linestyle="--", linewidth=1.0, zorder=2)
        top.text(
            0.002,
            1.0,
            " drifted at 1",
            transform=top.get_yaxis_transform(),
            va="bottom",
            ha="left",
            fontsize=7.5,
            color=RED,
        )
        top.set_ylabel("drift score")
        top.set_title("Monitor windows: drift score and live RMSE", pad=8)
        has_baseline = np.isfinite(baseline)
        if has_baseline.any():
            bottom.step(
                x[has_baseline],
                baseline[has_baseline],
                where="post",
                color=GREY,
                linestyle=(0, (5, 3)),
                linewidth=1.3,
                zorder=2,
            )
        has_rmse = np.isfinite(rmse)
        if has_rmse.any():
            bottom.plot(x[has_rmse], rmse[has_rmse], color="#d0d5dd", linewidth=1.0, zorder=2)
            _verdict_points(bottom, x, rmse, verdicts)
            finite = np.concatenate([rmse[has_rmse], baseline[has_baseline]])
            low, high = float(finite.min()), float(finite.max())
            pad = max((high - low) * 0.15, 0.05 * high, 0.05)
            bottom.set_ylim(max(0.0, low - pad), high + pad)
        else:
            bottom.text(
                0.5, 0.5, "no labelled windows yet", transform=bottom.transAxes, ha="center", color=GREY
            )
        bottom.set_ylabel("live RMSE (min)")
        _date_axis(bottom, span)
        seen = [v for v in _VERDICT_COLORS if v in verdicts]
        handles: list[Any] = [
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markersize=6,
                color=_VERDICT_COLORS[v],
                markeredgecolor="white",
                label=f"verdict {_verdict_label(v)}",
            )
            for v in seen
        ]
        handles.append(Line2D([], [], color=RED, linestyle="--", linewidth=1.0, label="drift line (score 1)"))
        if has_baseline.any():
            handles.append(
                Line2D(
                    [],
                    [],
                    color=GREY,
                    linestyle=(0, (5, 3)),
                    linewidth=1.3,
                    label="champion's validation RMSE",
                )
            )
        fig.legend(
            handles,
            [h.get_label() for h in handles],
            loc="lower center",
            bbox_to_anchor=(0.5 * (_LEFT + _RIGHT), 0.0),
            ncols=len(handles),
            fontsize=8.5,
        )
    return fig


def _verdict_label(key: str) -> str:
    return {"insufficient": "insufficient data"}.get(key, key)


def _verdict_points(ax: Axes, x: np.ndarray, y: np.ndarray, verdicts: Sequence[str]) -> None:
    for verdict, color in _VERDICT_COLORS.items():
        chosen = np.array([v == verdict for v in verdicts]) & np.isfinite(y)
        if chosen.any():
            ax.scatter(x[chosen], y[chosen], s=26, color=color, edgecolors="white", linewidths=0.6, zorder=4)


# --------------------------------------------------------------------------- tables


@dataclass
class _Row:
    """One table row: a decision, or a run of consecutive "not retraining" checks folded into one."""

    first: _Decision
    last: _Decision
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (shown time, reason) of each folded check

    @property
    def count(self) -> int:
        return max(1, len(self.reasons))


def _template(decision: _Decision) -> tuple[str, str]:
    """What two checks must share to fold: the champion, and the reason with its numbers masked."""
    return decision.version, _NUMBERS.sub("#", decision.reason)


def _fold(decisions: Sequence[_Decision]) -> list[_Row]:
    rows: list[_Row] = []
    for decision in decisions:
        entry = (_shown_time(decision.raw.get("event_time")), decision.reason)
        previous = rows[-1] if rows else None
        if (
            decision.kind == "no_retrain"
            and previous is not None
            and previous.first.kind == "no_retrain"
            and _template(previous.first) == _template(decision)
        ):
            previous.last = decision
            previous.reasons.append(entry)
        else:
            rows.append(_Row(decision, decision, [entry] if decision.kind == "no_retrain" else []))
    return rows


_BADGE_TEXT: Final[Mapping[str, str]] = {
    "retrain": "retrain",
    "no_retrain": "no retrain",
    "gate_passed": "gate passed",
    "gate_refused": "gate refused",
    "canary_step": "canary step",
    "promote": "promote",
    "rollback": "rollback",
}


def _badge(decision: _Decision) -> str:
    key = decision.key
    text = _BADGE_TEXT.get(key, decision.kind or "unknown")
    return f'<span class="badge {key}">{esc(text)}</span>'


def _facts(decision: _Decision) -> str:
    raw = decision.raw
    facts = []
    if raw.get("trigger"):
        facts.append(f"trigger <b>{esc(raw['trigger'])}</b>")
    if raw.get("challenger_version") is not None:
        facts.append(f"challenger <b>v{esc(raw['challenger_version'])}</b>")
    if raw.get("percent") is not None:
        facts.append(f"canary <b>{fmt(raw['percent'], 'g')}%</b>")
    return "<br>".join(facts)


def _decisions_html(decisions: Sequence[_Decision]) -> str:
    if not decisions:
        return _empty("No decisions in the timeline: the loop has not checked anything yet.")
    rows = []
    for row in _fold(decisions):
        decision = row.last
        css = {"promote": "major", "rollback": "bad"}.get(decision.key, "")
        when = esc(_shown_time(row.first.raw.get("event_time")))
        count = ""
        reason = esc(decision.reason)
        if row.count > 1:
            css = "folded"
            when = f"{when}<span class='span'>to {esc(_shown_time(decision.raw.get('event_time')))}</span>"
            count = f'<span class="count">\u00d7{row.count}</span>'
            if len({text for _, text in row.reasons}) > 1:
                items = "".join(f"<li>{esc(at)}: {esc(text)}</li>" for at, text in row.reasons)
                reason += (
                    f"<details><summary>each of the {row.count} checks (the numbers moved; "
                    f"newest shown)</summary><ol>{items}</ol></details>"
                )
        version = f"v{esc(decision.version)}" if decision.version else "n/a"
        rows.append(
            f'<tr class="{css}"><td class="when">{when}</td><td>{_badge(decision)}{count}</td>'
            f'<td class="num">{version}</td><td class="reason">{reason}</td>'
            f'<td class="facts">{_facts(decision)}</td></tr>'
        )
    folded = len(decisions) - len(rows)
    note = (
        f'<p class="note">{len(decisions)} decisions in {len(rows)} rows: runs of consecutive "not '
        'retraining" checks with the same champion and the same reason (up to its numbers) are folded into '
        "one row with their count and time span.</p>"
        if folded
        else ""
    )
    head = (
        "<tr><th>event time</th><th>decision</th><th class='num'>model</th><th>reason</th>"
        "<th>details</th></tr>"
    )
    return (
        f'<div class="card"><table class="decisions"><thead>{head}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
    )


def _alerts_html(alerts: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td class='num' style='text-align:left'>{esc(_shown_time(alert.get('event_time')))}</td>"
        f"<td><code>{esc(alert.get('name', ''))}</code></td><td>{esc(alert.get('reason', ''))}</td></tr>"
        for alert in alerts
    )
    head = "<tr><th>event time</th><th>alert</th><th>reason</th></tr>"
    return f'<div class="card"><table><thead>{head}</thead><tbody>{rows}</tbody></table></div>'


def _weeks_table(weekly: Sequence[_Week]) -> str:
    rows = []
    for week in weekly:
        values = (week.served, week.never, week.scheduled)
        finite = [v for v in values if math.isfinite(v)]
        best = min(finite) if finite else math.nan
        cells = "".join(
            f'<td class="num{" best" if value == best else ""}">{fmt(value, ".3f")}</td>' for value in values
        )
        rows.append(
            f"<tr><td>{week.monday.strftime('%Y-%m-%d')}</td>"
            f"<td class='num'>{fmt(week.trips, ',.0f')}</td>{cells}"
            f"<td class='num'>{_change(week.served, week.never)}</td>"
            f"<td class='num'>{_change(week.served, week.scheduled)}</td></tr>"
        )
    head = (
        "<tr><th>week (Monday)</th><th class='num'>labelled trips</th><th class='num'>served</th>"
        "<th class='num'>never retrain</th><th class='num'>scheduled</th><th class='num'>served vs never</th>"
        "<th class='num'>served vs scheduled</th></tr>"
    )
    return (
        f'<div class="card"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'
        '<p class="note">RMSE in minutes; the lowest of each week in bold.</p>'
    )


def _settings_html(replay: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{esc(key)}</code></td><td><code>{esc(_setting(value))}</code></td></tr>"
        for key, value in replay.items()
    )
    return f'<div class="card"><table class="settings"><tbody>{rows}</tbody></table></div>'


def _setting(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)
