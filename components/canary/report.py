"""The canary's decision page: every analysis of one canary as a table, and the paired errors as plots.

One self-contained HTML string (the same constraints as the other reports:
``components/html_report/page.py``): the judge writes it beside its decisions,
attaches it to the decision's MLflow run, and ``taxi-mlops canary analyze`` prints
its path.

Plots:

* the MAE ratio (canary / champion, same trips) at each analysis, with its
  interval and the non-inferiority limit -- how the evidence grew step by step;
* the paired errors: each labelled trip's absolute error under the champion
  (x) and under the canary (y), a seeded sample rasterized; points above the
  diagonal are trips the canary got more wrong;
* the distribution of the per-trip differences, whose mean the verdict is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

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
    TABLE_CSS,
    esc,
    figure_markup,
    fmt,
    html_document,
)

SCATTER_MAX_POINTS: Final = 4_000
SCATTER_SEED: Final = 20_210_301

_CSS: Final = (
    PAGE_CSS
    + TABLE_CSS
    + FIGURE_CSS
    + """
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 600; font-size: 13px; }
.badge.pass { background: #dcfce7; color: #166534; }
.badge.fail { background: #fee2e2; color: #991b1b; }
.badge.inconclusive { background: #fef9c3; color: #854d0e; }
.reason { margin: 8px 0 0; }
td.check-false { color: #991b1b; font-weight: 600; }
td.check-none { color: #854d0e; }
"""
)


def render_canary_report(
    decisions: Sequence[Mapping[str, Any]],
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> str:
    """The page for one canary: ``decisions`` oldest first (its analyses), ``pairs`` = (actual,
    champion predictions, canary predictions) of the labelled trips of the newest analysis."""
    if not decisions:
        raise ValueError("a canary report needs at least one decision")
    newest = decisions[-1]
    verdict = str(newest.get("verdict", ""))
    body = [
        f"<h1>Canary: version {esc(newest.get('canary'))} "
        f"against champion {esc(newest.get('champion'))}</h1>",
        '<p class="context">'
        f"<span><b>{len(decisions)}</b> analyses</span>"
        f"<span>now at <b>{esc(newest.get('percent'))}%</b></span>"
        f"<span>event time <b>{esc(newest.get('event_time') or 'n/a')}</b></span>"
        f"<span>decided <b>{esc(newest.get('evaluated_at') or '')}</b></span></p>",
        '<div class="card" style="padding:12px 16px">'
        f'<span class="badge {esc(verdict)}">{esc(verdict)}</span> '
        f"action <b>{esc(newest.get('action'))}</b>"
        f'<p class="reason">{esc(newest.get("reason", ""))}</p>'
        f'<p class="note">{esc(newest.get("result", ""))}</p></div>',
        "<h2>Checks of the newest analysis</h2>",
        _checks_table(newest.get("checks") or []),
        "<h2>Every analysis</h2>",
        _history_table(decisions),
        "<h2>Evidence</h2>",
        '<div class="plots">',
        _figure(
            _ratio_plot(decisions),
            "ratio",
            "MAE ratio canary/champion on the same labelled trips, with "
            "its interval; the dashed line is the non-inferiority limit.",
        ),
    ]
    if pairs is not None and pairs[0].size:
        actual, champion, canary = (np.asarray(a, dtype=np.float64) for a in pairs)
        body.append(
            _figure(
                _scatter(actual, champion, canary),
                "pairs",
                "Each labelled trip's absolute error: champion (x) vs canary (y). Above the "
                "diagonal: the canary was further off.",
            )
        )
        body.append(
            _figure(
                _differences(actual, champion, canary),
                "diff",
                "Per-trip |canary error| - |champion error| (minutes); the verdict is about "
                "their mean, relative to the champion's MAE.",
            )
        )
    else:
        body.append(
            '<p class="note">No labelled trips yet: the paired error plots appear once labels land.</p>'
        )
    body.append("</div>")
    title = f"canary {newest.get('canary')} vs champion {newest.get('champion')}"
    return html_document(title, _CSS, body)


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for check in checks:
        passed = check.get("passed")
        label = {True: "passed", False: "FAILED", None: "not yet"}[passed]
        css = {True: "", False: "check-false", None: "check-none"}[passed]
        rows.append(
            f"<tr><td><code>{esc(check.get('name'))}</code></td>"
            f'<td class="num">{fmt(check.get("value"), ".4g")}</td>'
            f'<td class="num">{fmt(check.get("limit"), ".4g")}</td>'
            f'<td class="{css}">{label}</td><td>{esc(check.get("detail", ""))}</td></tr>'
        )
    head = (
        "<tr><th>check</th><th class='num'>value</th><th class='num'>limit</th>"
        "<th>result</th><th>detail</th></tr>"
    )
    return f'<div class="card"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _history_table(decisions: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for decision in decisions:
        ops = (decision.get("operations") or {}).get("canary") or {}
        accuracy = decision.get("accuracy") or {}
        ci = accuracy.get("ratio_ci") or [None, None]
        requests = ops.get("requests")
        errors = ops.get("errors")
        rate = errors / requests if requests else None
        rows.append(
            f"<tr><td>{esc(decision.get('evaluated_at', ''))}</td>"
            f"<td>{esc(decision.get('event_time') or '')}</td>"
            f'<td class="num">{esc(decision.get("percent"))}%</td>'
            f"<td>{esc(decision.get('verdict'))}</td><td>{esc(decision.get('action'))}</td>"
            f'<td class="num">{fmt(requests, ".0f")}</td><td class="num">{fmt(rate, ".2%")}</td>'
            f'<td class="num">{fmt(ops.get("p99_ms"), ".1f")}</td>'
            f'<td class="num">{fmt(decision.get("labelled_pairs"), ".0f")}</td>'
            f'<td class="num">{fmt(accuracy.get("mae_ratio"), ".3f")} '
            f"[{fmt(ci[0], '.3f')}, {fmt(ci[1], '.3f')}]</td></tr>"
        )
    head = (
        "<tr><th>analysed</th><th>event time</th><th class='num'>percent</th><th>verdict</th><th>action</th>"
        "<th class='num'>canary requests</th><th class='num'>errors</th><th class='num'>p99 ms</th>"
        "<th class='num'>labelled pairs</th><th class='num'>MAE ratio [interval]</th></tr>"
    )
    return f'<div class="card"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _figure(fig: Figure, key: str, caption: str) -> str:
    return f'<figure class="card">{figure_markup(fig, key)}<figcaption>{esc(caption)}</figcaption></figure>'


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(5.6, 3.6))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _ratio_plot(decisions: Sequence[Mapping[str, Any]]) -> Figure:
    with matplotlib.rc_context(PLOT_RC):
        fig, ax = _new_figure()
        xs, ratios, lows, highs = [], [], [], []
        limit = None
        for index, decision in enumerate(decisions, start=1):
            accuracy = decision.get("accuracy") or {}
            limit = accuracy.get("limit", limit)
            if accuracy.get("mae_ratio") is not None and accuracy.get("ratio_ci"):
                xs.append(index)
                ratios.append(accuracy["mae_ratio"])
                lows.append(accuracy["ratio_ci"][0])
                highs.append(accuracy["ratio_ci"][1])
        if xs:
            ax.fill_between(xs, lows, highs, color=BLUE, alpha=0.18, linewidth=0)
            ax.plot(xs, ratios, color=BLUE, marker="o", markersize=3.5, linewidth=1.4, label="MAE ratio")
        else:
            ax.text(
                0.5,
                0.5,
                "no labelled pairs yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color=GREY,
            )
        if limit is not None:
            ax.axhline(limit, color=RED, linestyle="--", linewidth=1.0, label=f"limit {limit:.3f}")
        ax.axhline(1.0, color=GREY, linewidth=0.8)
        ax.set_xlabel("analysis")
        ax.set_ylabel("canary MAE / champion MAE")
        ax.set_title("Accuracy, analysis by analysis")
        ax.legend(loc="best")
        fig.tight_layout()
        return fig


def _scatter(actual: np.ndarray, champion: np.ndarray, canary: np.ndarray) -> Figure:
    champion_error, canary_error = np.abs(champion - actual), np.abs(canary - actual)
    if actual.size > SCATTER_MAX_POINTS:
        index = np.random.default_rng(SCATTER_SEED).choice(actual.size, SCATTER_MAX_POINTS, replace=False)
        champion_error, canary_error = champion_error[index], canary_error[index]
    top = float(np.quantile(np.concatenate([champion_error, canary_error]), 0.99)) or 1.0
    with matplotlib.rc_context(PLOT_RC):
        fig, ax = _new_figure()
        ax.scatter(champion_error, canary_error, s=4, alpha=0.35, color=BLUE, linewidths=0, rasterized=True)
        ax.plot([0, top], [0, top], color=RED, linewidth=1.0)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("|champion error| (min)")
        ax.set_ylabel("|canary error| (min)")
        ax.set_title(f"Paired errors ({actual.size} labelled trips)")
        fig.tight_layout()
        return fig


def _differences(actual: np.ndarray, champion: np.ndarray, canary: np.ndarray) -> Figure:
    difference = np.abs(canary - actual) - np.abs(champion - actual)
    low, high = np.quantile(difference, [0.005, 0.995])
    span = max(abs(float(low)), abs(float(high)), 0.5)
    with matplotlib.rc_context(PLOT_RC):
        fig, ax = _new_figure()
        ax.hist(np.clip(difference, -span, span), bins=60, range=(-span, span), color=BLUE, alpha=0.8)
        ax.axvline(
            float(difference.mean()), color=RED, linewidth=1.2, label=f"mean {difference.mean():+.3f} min"
        )
        ax.axvline(0.0, color=GREY, linewidth=0.8)
        ax.set_xlabel("|canary error| - |champion error| (min)")
        ax.set_ylabel("trips")
        ax.set_title("Per-trip differences")
        ax.legend(loc="best")
        fig.tight_layout()
        return fig
