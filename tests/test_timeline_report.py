"""The autopilot replay's timeline page: a replay-shaped timeline document rendered and parsed back.

The document is built here in the shape the replay writes (issue #12): two replayed
months after a first model trained on January, a retraining that was rolled back, a
shift in March that degraded the champion, a retraining promoted through the canary,
daily "not retraining" checks between them and one alert.
"""

from __future__ import annotations

import ast
import copy
import re
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from components.retraining import report
from components.retraining.report import render_timeline_report
from components.retraining.timeline import KINDS

EVIL = "<script>alert('x')</script>"
START = datetime(2021, 2, 1)
SHIFT = datetime(2021, 3, 1)
OK_REASON = (
    "not retraining: newest verdict ok; {n} window(s) in a row drifted (retrain at 3), "
    "0 in a row degraded (retrain at 2)"
)


class _Page(HTMLParser):
    """Start tags with their attributes, visible text (not CSS or SVG), and unbalanced end tags."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"})

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.words: list[str] = []
        self.unbalanced: list[str] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.unbalanced.append(tag)

    def handle_data(self, data: str) -> None:
        if not (set(self.open) & {"style", "svg"}):
            self.words.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.words).split())


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _decision(at: datetime, kind: str, reason: str, version: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_time": _iso(at),
        "kind": kind,
        "reason": reason,
        "model_version": version,
        "trigger": None,
        **extra,
    }


def replay_timeline() -> dict[str, Any]:
    """A timeline as the replay writes one: Feb-Mar 2021 green, March shifted from its first day."""
    rng = np.random.default_rng(12)
    decisions: list[dict[str, Any]] = []
    monitor: list[dict[str, Any]] = []

    def checks(first: datetime, days: int, version: str, reason: str) -> None:
        for day in range(days):
            decisions.append(
                _decision(first + timedelta(days=day), "no_retrain", reason.format(n=0), version)
            )

    checks(START + timedelta(days=1), 12, "1", OK_REASON)
    age = datetime(2021, 2, 14)
    decisions.append(
        _decision(
            age,
            "retrain",
            "retraining: the champion's training data ended 14.0 days ago (max 14) and 9812 labelled "
            "trips have landed since",
            "1",
            trigger="age",
        )
    )
    decisions.append(
        _decision(
            age + timedelta(hours=2),
            "gate",
            "gate passed: challenger RMSE 6.011 vs champion 6.040 on the held-out days; version 2 deployed "
            "as a canary",
            "1",
            passed=True,
            challenger_version="2",
        )
    )
    for step, percent in enumerate((10, 25)):
        decisions.append(
            _decision(
                age + timedelta(hours=8 + 10 * step),
                "canary_step",
                f"canary healthy on {120 + 80 * step} labelled pairs: stepping to {percent}%",
                "2",
                percent=percent,
            )
        )
    decisions.append(
        _decision(
            age + timedelta(days=1, hours=6),
            "rollback",
            "canary MAE ratio 1.043 [1.012, 1.077] above the non-inferiority limit 1.03: rolled back",
            "2",
        )
    )
    checks(age + timedelta(days=2), 13, "1", OK_REASON)
    decisions.append(
        _decision(SHIFT, "no_retrain", "not retraining: a new month landed (2021-03); no trigger holds", "1")
    )
    for day, have in ((2, 0.6), (3, 1.6)):
        decisions.append(
            _decision(
                SHIFT + timedelta(days=day),
                "no_retrain",
                "not retraining: live RMSE 7.412 is confirmed worse than the validation RMSE 6.040 in the "
                f"newest 2 window(s) (needs 2), since 2021-03-01T00:00:00; waiting for 3 days of labelled "
                f"trips after it to learn from and validate on (have {have})",
                "1",
            )
        )
    retrain_at = SHIFT + timedelta(days=4, hours=1)
    decisions.append(
        _decision(
            retrain_at,
            "retrain",
            "retraining: live RMSE 7.431 is confirmed worse than the validation RMSE 6.040 in the newest 3 "
            "window(s) (needs 2)",
            "1",
            trigger="degraded",
        )
    )
    decisions.append(
        _decision(
            retrain_at + timedelta(hours=1),
            "gate",
            "gate passed: challenger RMSE 6.502 vs champion 7.398 on 2021-03-03..2021-03-05; version 3 "
            "deployed as a canary",
            "1",
            passed=True,
            challenger_version="3",
        )
    )
    for step, percent in enumerate((10, 25, 50)):
        decisions.append(
            _decision(
                retrain_at + timedelta(hours=12 + 14 * step),
                "canary_step",
                f"canary better on {300 + 200 * step} labelled pairs: stepping to {percent}%",
                "3",
                percent=percent,
            )
        )
    promoted = retrain_at + timedelta(days=2, hours=14)
    decisions.append(
        _decision(promoted, "promote", "canary MAE ratio 0.871 [0.842, 0.902]: promoted to 100%", "3")
    )
    checks(promoted + timedelta(hours=10), 24, "3", OK_REASON)

    moment = START + timedelta(hours=12)
    while moment < datetime(2021, 4, 1):
        shifted = moment >= SHIFT + timedelta(days=1)
        version = "3" if moment >= promoted else "1"
        baseline = 6.04 if version == "1" else 6.55
        if moment < START + timedelta(days=2):
            verdict, rmse = "insufficient", None
        elif shifted and version == "1":
            verdict, rmse = "degraded", 7.4 + rng.normal(0, 0.08)
        else:
            rmse = baseline + rng.normal(0.05, 0.12)
            verdict = "ok"
        drift = float(np.clip(rng.normal(0.45, 0.12), 0.05, None))
        if datetime(2021, 2, 20) <= moment < datetime(2021, 2, 22):
            verdict, drift = "drift", 1.2 + rng.uniform(0, 0.3)
        monitor.append(
            {
                "event_time": _iso(moment),
                "window_start": _iso(moment - timedelta(days=1)),
                "window_end": _iso(moment),
                "verdict": verdict,
                "model_version": version,
                "rmse": None if rmse is None else round(float(rmse), 3),
                "baseline_rmse": baseline,
                "drift_score": round(drift, 3),
            }
        )
        moment += timedelta(hours=12)

    weekly = []
    for index in range(9):
        monday = START + timedelta(weeks=index)
        march = monday >= SHIFT
        noise = rng.normal(0, 0.05, 3)
        never = (7.45 if march else 6.05) + noise[0]
        scheduled = (7.30 if march else 6.05) + noise[1]
        served = never
        if monday >= SHIFT + timedelta(weeks=1):
            served = 6.50 + noise[2]
        elif march:
            served = 7.1 + noise[2]
        weekly.append(
            {
                "week": monday.strftime("%Y-%m-%d"),
                "trips": int(14_000 + rng.integers(-1500, 1500)),
                "served_rmse": round(float(served), 3),
                "never_retrain_rmse": round(float(never), 3),
                "scheduled_rmse": round(float(scheduled), 3),
            }
        )
    return {
        "replay": {
            "months": ["2021-02", "2021-03"],
            "color": "green",
            "data_dir": "/data/tlc-shifted",
            "label_delay_hours": 24.0,
            "started_from": "2021-01",
            "policy": {"degraded_windows": 2, "drift_windows": 3, "cooldown_days": 3.0},
        },
        "decisions": decisions,
        "weekly": weekly,
        "monitor": monitor,
        "alerts": [
            {
                "event_time": "2021-03-02T12:00:00",
                "name": "TaxiAccuracyDegraded",
                "reason": "live RMSE 7.41 above validation RMSE 6.04 by more than 10% for model version 1",
            }
        ],
        "summary": {
            "served_rmse": 6.61,
            "never_retrain_rmse": 6.83,
            "scheduled_rmse": 6.74,
            "trips": 126_000,
            "after_promotion": {
                "since": _iso(promoted),
                "served_rmse": 6.49,
                "never_retrain_rmse": 7.46,
                "scheduled_rmse": 7.31,
                "trips": 54_000,
            },
            "shift_to_promotion_days": 6.6,
        },
    }


@pytest.fixture(scope="module")
def timeline() -> dict[str, Any]:
    return replay_timeline()


@pytest.fixture(scope="module")
def page(timeline) -> str:
    return render_timeline_report(timeline)


def _rows(page: str) -> list[str]:
    table = page[page.index('<table class="decisions">') :]
    table = table[: table.index("</table>")]
    return re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", table, re.DOTALL)


def test_the_page_has_both_timeline_plots_and_every_section(page):
    parsed = _Page(page)
    assert parsed.unbalanced == []
    assert page.count("<svg") == 2
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == [
        "Served RMSE per week against the baselines",
        "What the monitor saw",
        "Decisions",
        "Alerts",
        "Weeks",
        "Replay settings",
    ]
    assert "Autopilot replay \u00b7 2021-02 \u2013 2021-03 \u00b7 green taxis" in parsed.text


def test_the_headline_counts_what_the_loop_did_and_gives_the_three_rmses(page):
    text = _Page(page).text
    assert (
        "Over 9 weeks of event time, 2 retrainings (1 promoted, 1 rolled back), triggered by model age "
        "\u00d71, accuracy decay \u00d71; 52 checks decided not to retrain." in text
    )
    assert "Whole replay 126,000 6.610 6.830 6.740 -3.2% -1.9%" in text
    assert "After the promotion (since 2021-03-07 15:00) 54,000 6.490 7.460 7.310 -13.0% -11.2%" in text
    assert "Shift to promotion 6.6 days" in text


def test_every_kind_gets_its_badge(page, timeline):
    kinds = {d["kind"] for d in timeline["decisions"]}
    assert kinds == set(KINDS)  # the document exercises every kind the timeline knows
    for css, text in [
        ("retrain", "retrain"),
        ("no_retrain", "no retrain"),
        ("gate_passed", "gate passed"),
        ("canary_step", "canary step"),
        ("promote", "promote"),
        ("rollback", "rollback"),
    ]:
        assert f'<span class="badge {css}">{text}</span>' in page
    refused = copy.deepcopy(timeline)
    refused["decisions"][13]["passed"] = False
    assert '<span class="badge gate_refused">gate refused</span>' in render_timeline_report(refused)


def test_runs_of_identical_checks_fold_into_one_row_with_their_count_and_span(page, timeline):
    rows = _rows(page)
    assert len(timeline["decisions"]) == 63
    folded = [row for row in rows if 'class="folded"' in row]
    assert [re.search(r"\u00d7(\d+)", row)[1] for row in folded] == ["12", "13", "2", "24"]
    first = folded[0]
    assert "2021-02-02 00:00" in first and "to 2021-02-13 00:00" in first
    assert report.esc(OK_REASON.format(n=0)) in first
    # Two waiting checks whose numbers moved fold too, and keep each reason one click away.
    waiting = folded[2]
    assert "(have 1.6)" in waiting.split("<details>")[0]
    assert "<details>" in waiting and "(have 0.6)" in waiting
    assert "<details>" not in first  # identical reasons: nothing more to show
    # The month-landed check between two runs has its own reason: it stays a row of its own.
    assert len(rows) == 63 - (12 - 1) - (13 - 1) - (2 - 1) - (24 - 1) == 16
    assert "63 decisions in 16 rows" in _Page(page).text


def test_a_changed_champion_ends_a_fold(timeline):
    changed = copy.deepcopy(timeline)
    for decision in changed["decisions"][5:13]:
        decision["model_version"] = "7"
    rows = _rows(render_timeline_report(changed))
    counts = [re.search(r"\u00d7(\d+)", row)[1] for row in rows if 'class="folded"' in row]
    assert counts == ["5", "7", "13", "2", "24"]


def test_the_alert_is_listed(page):
    text = _Page(page).text
    assert "2021-03-02 12:00 TaxiAccuracyDegraded live RMSE 7.41 above validation RMSE 6.04" in text


def test_hostile_strings_are_escaped(timeline):
    hostile = copy.deepcopy(timeline)
    hostile["decisions"][0]["reason"] = EVIL
    hostile["decisions"][0]["model_version"] = EVIL
    hostile["decisions"][1]["kind"] = EVIL
    hostile["decisions"][14]["trigger"] = EVIL
    hostile["alerts"][0]["name"] = EVIL
    hostile["replay"]["color"] = EVIL
    hostile["replay"]["data_dir"] = EVIL
    hostile["replay"][EVIL] = EVIL
    hostile["summary"]["after_promotion"]["since"] = EVIL
    hostile["monitor"][3]["verdict"] = EVIL
    hostile["weekly"][2]["week"] = EVIL
    page = render_timeline_report(hostile)
    parsed = _Page(page)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert parsed.unbalanced == []
    classes = {cls for _, attrs in parsed.tags for cls in (attrs.get("class") or "").split()}
    assert not any("<" in cls or "script" in cls for cls in classes)
    assert '<span class="badge unknown">' in page


def test_output_is_deterministic_and_leaves_rcparams_alone(page, timeline):
    before = copy.deepcopy(dict(matplotlib.rcParams))
    assert render_timeline_report(copy.deepcopy(timeline)) == page
    assert dict(matplotlib.rcParams) == before


def test_an_empty_document_says_each_section_is_empty():
    for document in (
        {},
        {"replay": {}, "decisions": [], "weekly": [], "monitor": [], "alerts": [], "summary": {}},
    ):
        page = render_timeline_report(document)
        parsed = _Page(page)
        assert parsed.unbalanced == [] and "<svg" not in page
        text = parsed.text
        assert "No weekly RMSE in the timeline" in text
        assert "No monitor windows in the timeline" in text
        assert "No decisions in the timeline" in text
        assert "No decisions recorded: the loop has not checked anything yet." in text
        assert "No RMSE yet: the timeline scores no labelled trips" in text
        assert "<h2>Alerts</h2>" not in page


def test_missing_summary_is_pooled_from_the_weeks(timeline):
    partial = copy.deepcopy(timeline)
    del partial["summary"]
    weeks = partial["weekly"]
    trips = np.array([w["trips"] for w in weeks], dtype=float)
    served = np.sqrt(np.sum(trips * np.square([w["served_rmse"] for w in weeks])) / trips.sum())
    text = _Page(render_timeline_report(partial)).text
    assert f"Whole replay {trips.sum():,.0f} {served:.3f}" in text
    assert "pooled from the weeks" in text
    assert "no promotion during the replay" in text


def test_broken_records_are_skipped_not_fatal(timeline):
    broken = copy.deepcopy(timeline)
    broken["decisions"].insert(3, "not a record")
    rollback = next(d for d in broken["decisions"] if isinstance(d, dict) and d["kind"] == "rollback")
    rollback["event_time"] = "yesterday"
    broken["monitor"][4]["rmse"] = "n/a"
    broken["weekly"].append({"week": None})
    page = render_timeline_report(broken)
    assert page.count("<svg") == 2
    assert "yesterday" in _Page(page).text


def test_the_page_is_self_contained(page):
    parsed = _Page(page)
    assert not {tag for tag, _ in parsed.tags} & {"script", "link", "iframe", "object", "embed", "base"}
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "xlink:href", "action"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, name, value[:60])
        assert not any(name.startswith("on") for name in attrs), tag
    assert not re.search(r"https?://", page.replace("http://www.w3.org/", ""))


def test_uses_the_figure_api_not_pyplot():
    tree = ast.parse(Path(report.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            imported.add(node.module)
    assert not any("pyplot" in name or "pylab" in name for name in imported)
    assert {"matplotlib.figure.Figure", "matplotlib.backends.backend_agg.FigureCanvasAgg"} <= imported
