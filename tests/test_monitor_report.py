"""The monitor's HTML report: real verdicts of a real fitted model's profile, rendered and parsed back."""

from __future__ import annotations

import ast
import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from support.model_fixtures import profiled_ridge

from components.data.ingest import load_month
from components.features.design_matrix import vectorize_trips
from components.features.trip_features import TARGET_COLUMN
from components.models.train import fit_candidate
from components.monitoring import report
from components.monitoring.monitor import monitor_window
from components.monitoring.reference_profile import build_reference_profile
from components.monitoring.report import MIN_LABELS_PER_DAY, TOP_ZONES, render_monitor_report
from components.monitoring.verdict_store import stamped

#: Every section heading, in page order: each renders, with plots or with a reason why not.
SECTIONS = [
    "Feature drift",
    "Live accuracy",
    "Distributions: reference vs this window",
    "Zones that moved most",
    "Accuracy over time",
    "Residuals: reference vs this window",
]
SIZE_BUDGET = 1_500_000
EVIL = "<script>alert('x')</script>"


class _Page(HTMLParser):
    """Start tags with their attributes, visible text (not CSS or SVG), and unbalanced end tags."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"})
    HIDDEN = frozenset({"style", "svg", "path", "defs", "g", "clipPath", "use", "rect"})

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


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    return profiled_ridge(tmp_path_factory.mktemp("tlc"))


def _window(model, trips: pd.DataFrame, n: int, seed: int, *, labelled: bool = True) -> pd.DataFrame:
    """``n`` validation trips as the monitor reads them: over four March days, plus ten on a fifth."""
    chosen = trips.iloc[np.random.default_rng(seed).integers(0, len(trips), n)].reset_index(drop=True)
    window = pd.DataFrame(
        {
            "PULocationID": pd.to_numeric(chosen["PULocationID"]).to_numpy(),
            "DOLocationID": pd.to_numeric(chosen["DOLocationID"]).to_numpy(),
            "trip_distance": chosen["trip_distance"].to_numpy(),
            "prediction": model.predict(chosen),
        }
    )
    offsets = np.linspace(0, 4 * 86_400 - 1, n).astype("timedelta64[s]")
    offsets[-10:] = np.timedelta64(4 * 86_400 + 3_600, "s")  # a fifth day with too few labels to draw
    window.insert(0, "event_time", pd.to_datetime(np.datetime64("2021-03-01") + offsets).tz_localize("UTC"))
    window[TARGET_COLUMN] = chosen[TARGET_COLUMN].to_numpy() if labelled else np.nan
    return window


def _judge(window: pd.DataFrame, profile, version: str = "3") -> dict[str, Any]:
    start, end = "2021-03-01T00:00:00", "2021-03-06T00:00:00"
    return stamped(monitor_window(window, profile, model_version=version, start=start, end=end))


def _earlier(version: str, end: str, rmse: float | None) -> dict[str, Any]:
    return {
        "evaluated_at": f"{end}+00:00",
        "model_version": version,
        "window": {"start": "2021-02-01T00:00:00", "end": end, "predictions": 900, "labelled": 900},
        "verdict": "ok",
        "accuracy": {"rmse": rmse, "rmse_ci": None if rmse is None else [rmse - 0.2, rmse + 0.2]},
    }


@pytest.fixture(scope="module")
def drifted(reference) -> tuple[dict[str, Any], pd.DataFrame, str]:
    model, profile, val_trips = reference
    window = _window(model, val_trips, 3_000, seed=1)
    window["trip_distance"] *= 1.3
    window[TARGET_COLUMN] *= 1.2
    document = _judge(window, profile)
    history = [
        _earlier("3", "2021-02-15T00:00:00", 6.2),
        _earlier("2", "2021-02-22T00:00:00", 6.9),
        _earlier("3", "2021-02-25T00:00:00", None),  # judged nothing: no point
        document,  # the store already holds this verdict: drawn once, as "this window"
    ]
    return document, window, render_monitor_report(document, window, profile, history)


def _headings(page: str) -> list[str]:
    return [re.sub(r"<.*?>", "", h) for h in re.findall(r"<h2>(.*?)</h2>", page)]


def _drift_rows(page: str) -> list[str]:
    table = page[page.index("<h2>Feature drift</h2>") : page.index("<h2>Live accuracy</h2>")]
    return re.findall(r"<tr(?: class=\"drifted\")?><td><b>.*?</tr>", table, re.DOTALL)


def test_a_drifted_labelled_window_shows_every_section_and_plot(drifted, reference):
    document, _, page = drifted
    assert document["verdict"] == "degraded" and document["drift"]["features"]["trip_distance"]["drifted"]
    parsed = _Page(page)
    assert page.startswith("<!DOCTYPE html>") and parsed.unbalanced == [] and parsed.open == []
    assert _headings(page) == SECTIONS
    # distance, predictions, pickup zones, dropoff zones, accuracy over time, residuals
    assert page.count("<svg") == page.count("</svg>") == 6
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # six inline SVGs, no clashing ids

    text = parsed.text
    assert '<section class="verdict degraded"' in page
    for fact in ("Model version 3", "Window start 2021-03-01T00:00:00", "Window end 2021-03-06T00:00:00"):
        assert fact in text
    assert "Predictions 3,000" in text and "Labelled 3,000" in text and "Label coverage 100.0%" in text
    assert f"Evaluated at {document['evaluated_at']}" in text
    assert "Live RMSE" in text and f"{document['accuracy']['rmse']:.3f} min" in text
    assert f"{reference[1].scores.rmse:.3f} min" in text  # the validation RMSE it is judged against


def test_the_drift_table_states_each_result_and_what_its_effect_means(drifted):
    document, _, page = drifted
    rows = _drift_rows(page)
    features = document["drift"]["features"]
    assert len(rows) == len(features) == 5
    for row, (name, result) in zip(rows, features.items(), strict=True):
        assert f"<code>{name}</code>" in row
        assert f"{result['effect']:.3f}" in row and f"{result['min_effect']:.3f}" in row
        assert format(result["statistic"], ".4g") in row and format(result["threshold"], ".4g") in row
        assert row.startswith('<tr class="drifted">') == result["drifted"]
        assert ("pill yes" in row) == result["drifted"]
    text = _Page(page).text
    assert "total variation of the pickup-zone mix" in text
    assert "Wasserstein distance in reference interquartile ranges" in text
    assert "routes the model never trained on" in text


def test_the_zones_that_moved_most_are_the_largest_share_changes(drifted, reference):
    _, window, page = drifted
    profile = reference[1]
    reference_share = np.asarray(profile.validation.pickup_counts) / profile.validation.rows
    window_share = np.bincount(window["PULocationID"], minlength=reference_share.size) / len(window)
    change = window_share - reference_share
    expected = np.argsort(-np.abs(change), kind="stable")[:TOP_ZONES]
    table = page[page.index("<th>Pickup zone</th>") :]
    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"num\">([\d.]+)%</td><td class=\"num\">([\d.]+)%", table)
    assert [int(zone) for zone, _, _ in rows] == expected.tolist()
    zone, ref, cur = rows[0]
    assert float(ref) == pytest.approx(reference_share[int(zone)] * 100, abs=0.006)
    assert float(cur) == pytest.approx(window_share[int(zone)] * 100, abs=0.006)
    assert "Total variation of the pickup-zone mix" in _Page(page).text


def test_accuracy_over_time_counts_its_verdicts_and_the_days_it_leaves_out(drifted):
    _, _, page = drifted
    text = _Page(page).text
    # Two earlier verdicts with an RMSE; the one without is skipped and the current one is not repeated.
    assert "the live RMSE of 2 earlier stored verdict(s) at their window end, this window's" in text
    assert f"1 day(s) with fewer than {MIN_LABELS_PER_DAY} labelled trips are not drawn." in text
    assert "Mean residual in the window:" in text


def test_an_unlabelled_window_says_why_its_accuracy_sections_are_empty(reference):
    model, profile, val_trips = reference
    window = _window(model, val_trips, 2_000, seed=2, labelled=False)
    document = _judge(window, profile)
    assert document["accuracy"]["verdict"] == "insufficient_data"
    page = render_monitor_report(document, window, profile)
    text = _Page(page).text
    assert _headings(page) == SECTIONS
    assert page.count("<svg") == 4  # distributions and zones only
    assert "No labels have been joined to this window yet" in text
    assert "No labelled trips in this window yet, so no RMSE per day." in text
    assert "nothing to draw yet" in text
    assert "No labelled trips in this window: the residual (predicted \u2212 actual) distribution" in text
    assert "Labelled 0" in text and "Label coverage 0.0%" in text
    assert "Evaluated at" in text

    # Earlier verdicts with an RMSE still give the accuracy-over-time plot something to show.
    with_history = render_monitor_report(document, window, profile, [_earlier("3", "2021-02-20", 6.3)])
    assert with_history.count("<svg") == 5
    assert "the live RMSE of 1 earlier stored verdict(s)" in _Page(with_history).text


def test_an_insufficient_data_verdict_renders_with_its_reasons(reference):
    model, profile, val_trips = reference
    window = _window(model, val_trips, 60, seed=3)
    document = monitor_window(window, profile, model_version="3", start="2021-03-01", end="")
    assert document["verdict"] == "insufficient_data"
    page = render_monitor_report(document, window, profile)
    parsed = _Page(page)
    assert parsed.unbalanced == [] and _headings(page) == SECTIONS
    assert '<section class="verdict insufficient"' in page
    text = parsed.text
    assert "Too few trips to judge drift (60 in the window) and too few labels" in text
    assert "Not judged: the window has 60 trips, fewer than the monitor's minimum (default 500)" in text
    assert "Not judged: 60 labelled trips, fewer than the monitor's minimum (default 200)" in text
    assert "Only 60 trips in the window: its shares per bin are noisy." in text
    assert "Window end open" in text and "Evaluated at not stored" in text
    assert _drift_rows(page) == []


def test_an_empty_window_renders_without_plots(reference):
    _, profile, _ = reference
    empty = pd.DataFrame(
        {
            "event_time": pd.Series(dtype="datetime64[ns, UTC]"),
            "PULocationID": pd.Series(dtype="int64"),
            "DOLocationID": pd.Series(dtype="int64"),
            "trip_distance": pd.Series(dtype="float64"),
            "prediction": pd.Series(dtype="float64"),
        }
    )
    document = monitor_window(empty, profile, model_version="3", start="a", end="b")
    page = render_monitor_report(document, empty, profile)
    assert "<svg" not in page and _Page(page).unbalanced == []
    text = _Page(page).text
    assert "The window has no trips: nothing to compare with the reference." in text
    assert "The window has no trips with a zone id" in text


def test_hostile_strings_from_the_verdict_are_escaped(drifted, reference):
    document, window, _ = drifted
    hostile = copy.deepcopy(document)
    hostile["model_version"] = EVIL
    hostile["verdict"] = EVIL
    hostile["evaluated_at"] = EVIL
    hostile["window"]["start"] = EVIL
    hostile["drift"]["features"][EVIL] = {
        "statistic": EVIL,
        "threshold": 1.0,
        "effect": 0.5,
        "min_effect": 0.1,
        "drifted": True,
    }
    hostile["accuracy"]["rmse_ci"] = EVIL
    history = [{**_earlier(EVIL, EVIL, 6.0)}, {"window": EVIL, "accuracy": EVIL}]
    page = render_monitor_report(hostile, window, reference[1], history)
    parsed = _Page(page)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not {tag for tag, _ in parsed.tags} & {"script"}
    assert parsed.unbalanced == []
    # Classes come from a fixed set, never from the document.
    assert '<section class="verdict unknown"' in page
    classes = {cls for _, attrs in parsed.tags for cls in (attrs.get("class") or "").split()}
    assert not any("<" in cls or "script" in cls for cls in classes)
    assert f"<code>{report.esc(EVIL)}</code>" in page
    assert "a statistic this report does not know" in parsed.text


def test_output_is_deterministic_and_leaves_rcparams_alone(drifted, reference):
    document, window, page = drifted
    before = copy.deepcopy(dict(matplotlib.rcParams))
    history = [
        _earlier("3", "2021-02-15T00:00:00", 6.2),
        _earlier("2", "2021-02-22T00:00:00", 6.9),
        _earlier("3", "2021-02-25T00:00:00", None),
        document,
    ]
    assert render_monitor_report(document, window.copy(), reference[1], history) == page
    assert dict(matplotlib.rcParams) == before


def test_the_page_is_self_contained(drifted):
    _, _, page = drifted
    parsed = _Page(page)
    assert not {tag for tag, _ in parsed.tags} & {"script", "link", "iframe", "object", "embed", "base"}
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "xlink:href", "action"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, name, value[:60])
        assert not any(name.startswith("on") for name in attrs), tag  # no inline event handlers
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", page)
    assert not re.search(r"https?://", page.replace("http://www.w3.org/", ""))


def test_a_million_row_window_keeps_the_page_small(drifted, reference):
    _, window, _ = drifted
    big = window.iloc[np.random.default_rng(4).integers(0, len(window), 1_000_000)].reset_index(drop=True)
    document = _judge(big, reference[1])
    page = render_monitor_report(document, big, reference[1])
    assert len(page.encode("utf-8")) < SIZE_BUDGET
    assert "Predictions 1,000,000" in _Page(page).text
    assert page.count("<svg") == 6


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


@pytest.mark.real_data
def test_a_real_month_against_a_real_profile(shared_tlc_dir: Path):
    """Ridge trained on green 2021-01, validated on 2021-02; March's trips as the served window."""
    train, _ = load_month("green", "2021-01", data_dir=shared_tlc_dir)
    validation, _ = load_month("green", "2021-02", data_dir=shared_tlc_dir)
    march, _ = load_month("green", "2021-03", data_dir=shared_tlc_dir)
    vectorizer, x_train, x_val = vectorize_trips(train, validation)
    model, _ = fit_candidate("ridge", None, vectorizer, x_train, x_val)
    profile = build_reference_profile(model, train, validation)
    window = pd.DataFrame(
        {
            "event_time": pd.to_datetime(march["pickup_datetime"]).dt.tz_localize("UTC"),
            "PULocationID": pd.to_numeric(march["PULocationID"]),
            "DOLocationID": pd.to_numeric(march["DOLocationID"]),
            "trip_distance": march["trip_distance"],
            "prediction": model.predict(march),
            TARGET_COLUMN: march[TARGET_COLUMN],
        }
    )
    window.loc[window.index[::3], TARGET_COLUMN] = np.nan  # a third not labelled yet
    document = stamped(
        monitor_window(
            window, profile, model_version="1", start="2021-03-01T00:00:00", end="2021-04-01T00:00:00"
        )
    )
    page = render_monitor_report(document, window, profile, [_earlier("1", "2021-03-01T00:00:00", 6.7)])
    parsed = _Page(page)
    assert parsed.unbalanced == [] and _headings(page) == SECTIONS
    assert page.count("<svg") == 6 and len(page.encode("utf-8")) < SIZE_BUDGET
    assert document["verdict"] == "ok"  # March is close to February: no drift, not degraded
    text = parsed.text
    assert f"Predictions {len(march):,}" in text and "Label coverage 66.7%" in text
    # Every March day has hundreds of labelled trips, so all 31 are drawn and none is left out.
    assert "not drawn" not in text
    assert len(_drift_rows(page)) == 5
    assert "Total variation of the pickup-zone mix" in text
