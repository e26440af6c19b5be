"""The evaluation report is one safe, self-contained, size-bounded HTML page."""

from __future__ import annotations

import ast
import copy
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from components.evaluation import report
from components.evaluation.report import render_evaluation_report

SIZE_BUDGET = 1_500_000
CONTEXT = {"color": "green", "train_month": "2021-01", "val_month": "2021-02", "pipeline_run": "run-42"}


def _evaluation(**gate: Any) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "name": "lasso",
                "rmse": 9.0321,
                "mae": 6.811,
                "train_seconds": 3.42,
                "params": {"alpha": 0.001},
            },
            {
                "name": "xgboost",
                "rmse": 6.4012,
                "mae": 4.512,
                "train_seconds": 41.8,
                "params": {"max_depth": 8, "learning_rate": 0.0934},
            },
            {"name": "linear_regression", "rmse": 7.7589, "mae": 5.912, "train_seconds": 2.1, "params": {}},
        ],
        "winner": "xgboost",
        "gate": {
            "passed": True,
            "reason": "challenger beats champion by 3.7% (required 1%)",
            "challenger_rmse": 6.4012,
            "champion_rmse": 6.6502,
            "champion_version": "7",
            "min_improvement": 0.01,
            **gate,
        },
    }


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = np.clip(rng.gamma(2.2, 6.5, n), 1.0, 60.0)
    y_pred = 0.6 * y_true + 5.5 + rng.normal(0.0, 4.5, n)
    return y_true, y_pred


class _Collector(HTMLParser):
    """Strict-ish parse: records start tags, text, and unbalanced end tags."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.mismatched: list[str] = []
        self.in_foreign = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.mismatched.append(tag)

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] in ("style", "svg", "path", "defs", "g"):
            return
        self.text.append(data)


def _parse(document: str) -> _Collector:
    parser = _Collector()
    parser.feed(document)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def passed_document() -> str:
    y_true, y_pred = _data(60_000)
    return render_evaluation_report(_evaluation(), y_true, y_pred, CONTEXT)


def _text(document: str) -> str:
    return " ".join(" ".join(_parse(document).text).split())


def test_document_parses_with_balanced_tags(passed_document: str) -> None:
    assert passed_document.startswith("<!DOCTYPE html>")
    parser = _parse(passed_document)
    assert parser.mismatched == []
    assert parser.stack == []
    tags = [tag for tag, _ in parser.starts]
    assert tags.count("html") == tags.count("head") == tags.count("body") == 1
    assert "title" in tags


def test_document_is_self_contained(passed_document: str) -> None:
    parser = _parse(passed_document)
    tags = {tag for tag, _ in parser.starts}
    assert not tags & {"script", "link", "iframe", "object", "embed"}
    for tag, attrs in parser.starts:
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, name, value[:60])
    assert "@import" not in passed_document
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", passed_document)


def test_header_shows_context(passed_document: str) -> None:
    text = _text(passed_document)
    for value in CONTEXT.values():
        assert value in text
    assert "train month:" in text
    assert "validation trips: 60,000" in text


def test_candidates_table_sorted_by_rmse_with_formatted_metrics(passed_document: str) -> None:
    rows = re.findall(r"<tr(?: class=\"winner\")?><td>(.*?)</tr>", passed_document, re.DOTALL)
    names = [re.sub(r"<.*?>.*", "", row, flags=re.DOTALL) for row in rows]
    assert names == ["xgboost", "linear_regression", "lasso"]
    text = _text(passed_document)
    for rmse, mae in (("6.401", "4.512"), ("7.759", "5.912"), ("9.032", "6.811")):
        assert rmse in text
        assert mae in text
    assert "41.8" in text
    assert "learning_rate=0.0934, max_depth=8" in text
    assert "alpha=0.001" in text
    assert "defaults" in text  # empty params


def test_winner_row_is_highlighted(passed_document: str) -> None:
    winner_rows = re.findall(r'<tr class="winner">(.*?)</tr>', passed_document, re.DOTALL)
    assert len(winner_rows) == 1
    assert winner_rows[0].startswith("<td>xgboost")
    assert "winner</span>" in winner_rows[0]
    assert "tr.winner" in passed_document  # styled, not just tagged


def test_passed_gate_banner(passed_document: str) -> None:
    assert '<section class="gate passed"' in passed_document
    text = _text(passed_document)
    assert "Gate passed" in text
    assert "challenger beats champion by 3.7% (required 1%)" in text
    assert "6.401 min" in text and "6.650 min" in text
    assert "Champion version 7" in text
    assert "+0.249 min (+3.74 %)" in text
    assert "Required improvement 1.0% lower RMSE" in text


def test_failed_gate_renders_as_failed() -> None:
    y_true, y_pred = _data(2_000)
    evaluation = _evaluation(
        passed=False, reason="challenger 6.90 is not 1% better than champion 6.65", challenger_rmse=6.9
    )
    document = render_evaluation_report(evaluation, y_true, y_pred, CONTEXT)
    assert '<section class="gate failed"' in document
    assert "gate passed" not in document
    text = _text(document)
    assert "Gate failed" in text and "Gate passed" not in text
    assert "challenger 6.90 is not 1% better than champion 6.65" in text
    assert "-0.250 min" in text


def test_no_champion_renders_sensibly() -> None:
    y_true, y_pred = _data(2_000)
    evaluation = _evaluation(champion_rmse=None, champion_version=None, reason="no champion yet")
    document = render_evaluation_report(evaluation, y_true, y_pred, CONTEXT)
    text = _text(document)
    assert "no champion" in text
    assert "None" not in text
    assert "nan" not in text.lower().split()
    assert "Improvement" not in text
    assert "Champion version" not in text


def test_plots_are_inline_svg(passed_document: str) -> None:
    assert passed_document.count("<svg") == 3
    assert passed_document.count("</svg>") == 3
    assert "<?xml" not in passed_document
    assert "<!DOCTYPE svg" not in passed_document
    text = _text(passed_document)
    assert "5,000 of 60,000 trips" in text
    # Per-plot id salts keep element ids of the three inline SVGs distinct.
    ids = re.findall(r'\bid="([^"]+)"', passed_document)
    assert len(ids) == len(set(ids))


def test_untrusted_strings_are_escaped() -> None:
    evil = "<script>alert('x')</script>"
    evaluation = _evaluation(reason=f"reason {evil}")
    evaluation["candidates"][0]["name"] = evil
    evaluation["candidates"][0]["params"] = {"alpha": evil, evil: 1}
    evaluation["winner"] = evil
    context = {**CONTEXT, "pipeline_run": evil, evil: "x"}
    y_true, y_pred = _data(1_000)
    document = render_evaluation_report(evaluation, y_true, y_pred, context)
    assert "<script" not in document
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in document
    tags = {tag for tag, _ in _parse(document).starts}
    assert "script" not in tags
    # The escaped winner is still highlighted.
    assert '<tr class="winner"><td>&lt;script&gt;' in document


def test_size_and_time_budget_for_a_million_rows() -> None:
    y_true, y_pred = _data(1_000_000)
    started = time.perf_counter()
    document = render_evaluation_report(_evaluation(), y_true, y_pred, CONTEXT)
    elapsed = time.perf_counter() - started
    assert len(document.encode("utf-8")) < SIZE_BUDGET
    assert elapsed < 5.0
    assert "5,000 of 1,000,000 trips" in document
    assert "validation trips:</b> 1,000,000" in document


def test_rendering_is_deterministic_and_leaves_rcparams_alone(passed_document: str) -> None:
    before = copy.deepcopy(dict(matplotlib.rcParams))
    y_true, y_pred = _data(60_000)
    again = render_evaluation_report(_evaluation(), y_true, y_pred, CONTEXT)
    assert again == passed_document
    assert dict(matplotlib.rcParams) == before


def test_oversized_svg_falls_back_to_png(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "SVG_MAX_CHARS", 1_000)
    y_true, y_pred = _data(3_000)
    document = render_evaluation_report(_evaluation(), y_true, y_pred, CONTEXT)
    assert document.count('<img alt="') == 3
    assert document.count('src="data:image/png;base64,') == 3
    assert "<svg" not in document
    assert len(document.encode("utf-8")) < SIZE_BUDGET


def test_non_finite_rows_are_dropped_and_counted() -> None:
    y_true, y_pred = _data(5_000)
    y_pred[:7] = np.nan
    y_true[7] = np.inf
    document = render_evaluation_report(_evaluation(), y_true, y_pred, CONTEXT)
    text = _text(document)
    assert "8 rows with a missing or non-finite value are left out." in text
    assert "validation trips: 4,992" in text
    assert document.count("<svg") == 3


def test_no_rows_renders_without_plots() -> None:
    empty = np.array([], dtype=np.float64)
    document = render_evaluation_report(_evaluation(), empty, empty, CONTEXT)
    assert "No validation rows to plot." in document
    assert "<svg" not in document
    assert _parse(document).mismatched == []


def test_length_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="10 actual durations but 9 predictions"):
        render_evaluation_report(_evaluation(), np.ones(10), np.ones(9), CONTEXT)


def test_uses_figure_api_not_pyplot() -> None:
    tree = ast.parse(Path(report.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            imported.add(node.module)
    assert not any("pyplot" in name or "pylab" in name for name in imported)
    assert "matplotlib.figure.Figure" in imported
    assert "matplotlib.backends.backend_agg.FigureCanvasAgg" in imported
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert not any(isinstance(c.func, ast.Attribute) and c.func.attr == "use" for c in calls)
