"""The alert rules: promtool checks them and runs their unit tests, and both catch a broken rule.

``manifests/components/monitoring/rules/taxi-mlops.rules.yml`` is the one rules file
(local Prometheus and cluster); ``taxi-mlops.rules.test.yml`` beside it must make every
rule fire somewhere and stay quiet somewhere. The mutation tests break a copy of the
rules the ways a careless edit would and expect promtool to say so.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.prometheus_binaries import require_binary

from serving.observability import RULES_FILE

RULES_DIR = RULES_FILE.parent
TESTS_FILE = RULES_DIR / "taxi-mlops.rules.test.yml"
RETRAIN_ALERTS = {"TaxiDataDrift", "TaxiAccuracyDegraded"}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _rules(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", RULES_FILE.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", TESTS_FILE.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_is_tested_firing_and_quiet() -> None:
    """Each alert appears in the unit tests with expected alerts (fires) and with none (quiet)."""
    tests = yaml.safe_load(TESTS_FILE.read_text(encoding="utf-8"))
    fires, quiet = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names - fires == set(), "rules never shown firing"
    assert names - quiet == set(), "rules never shown staying quiet"
    assert (fires | quiet) <= names, "tests name an alert the rules do not have"


def test_every_rule_says_how_bad_and_what_happened() -> None:
    for rule in _rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert (rule["labels"].get("action") == "retrain-candidate") == (name in RETRAIN_ALERTS), name
    # Rules read only series that exist on a cluster too: none of the local splitter's own.
    assert not [rule["alert"] for rule in _rules() if "taxi_splitter_" in rule["expr"]]


def test_the_autopilots_own_alert_is_a_rule() -> None:
    """The alert the loop writes into its timeline is the one Prometheus raises from its state."""
    from pipelines.autopilot.loop import UNREADABLE_ALERT

    (rule,) = [rule for rule in _rules() if rule["alert"] == UNREADABLE_ALERT]
    assert "taxi_autopilot_unreadable_month" in rule["expr"]


def _mutated(tmp_path: Path, alert: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the rules folder where ``change`` edited the rule ``alert`` (it must change it)."""
    folder = tmp_path / "rules"
    shutil.copytree(RULES_DIR, folder)
    path = folder / RULES_FILE.name
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    (rule,) = [r for group in document["groups"] for r in group["rules"] if r["alert"] == alert]
    before = yaml.safe_dump(rule)
    change(rule)
    assert yaml.safe_dump(rule) != before, "the mutation did not apply"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return folder


def _expr(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(rule: dict[str, Any]) -> None:
        rule["expr"] = rule["expr"].replace(old, new)

    return change


def test_promtool_check_refuses_a_broken_expression(tmp_path: Path) -> None:
    folder = _mutated(tmp_path, "TaxiDataDrift", _expr("== 1)", "== )"))
    result = _promtool("check", "rules", RULES_FILE.name, cwd=folder)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("description", "alert", "change"),
    [
        ("5xx threshold raised to 3%", "TaxiPredictorHighErrorRate", _expr(") > 0.01", ") > 0.03")),
        ("5xx without its for: (a burst fires)", "TaxiPredictorHighErrorRate", lambda rule: rule.pop("for")),
        ("5xx without the minimum of errors", "TaxiPredictorHighErrorRate", _expr(">= 5", ">= 0")),
        ("p99 threshold raised to 250 ms", "TaxiPredictorSlowP99", _expr("> 0.05", "> 0.25")),
        ("p99 without the minimum traffic", "TaxiPredictorSlowP99", _expr("> 0.1", "> 0")),
        ("no traffic blind to an empty scrape", "TaxiNoTraffic", _expr(" or on() vector(0)", "")),
        ("target down at the first failed scrape", "TaxiScrapeTargetDown", lambda rule: rule.pop("for")),
        ("drift on every feature, drifted or not", "TaxiDataDrift", _expr(" == 1", " >= 0")),
        ("drift without its retrain label", "TaxiDataDrift", lambda rule: rule["labels"].pop("action")),
        ("accuracy ignoring the verdict", "TaxiAccuracyDegraded", _expr(" == 1", " >= 0")),
        ("dropped counted with written", "TaxiPredictionLogDropping", _expr('"dropped.*"', '".*"')),
        ("stale after 2 days, not 26 hours", "TaxiMonitorStale", _expr("26 * 3600", "48 * 3600")),
        ("unreadable at the first failed read", "TaxiMonitorVerdictUnreadable", lambda rule: rule.pop("for")),
        (
            "one alert for all unreadable months, none named",
            "TaxiTrainingDataUnreadable",
            _expr("taxi_autopilot_unreadable_month == 1", "taxi_autopilot_unreadable_months > 0"),
        ),
        ("stuck at the first pending scrape", "TaxiRetrainingStuck", lambda rule: rule.pop("for")),
        ("stuck after 3 hours, not 2", "TaxiRetrainingStuck", lambda rule: rule.update({"for": "3h"})),
        (
            "state unreadable at the first failed read",
            "TaxiAutopilotStateUnreadable",
            lambda rule: rule.pop("for"),
        ),
    ],
)
def test_promtool_unit_tests_catch_a_wrong_rule(
    tmp_path: Path, description: str, alert: str, change: Callable[[dict[str, Any]], None]
) -> None:
    folder = _mutated(tmp_path, alert, change)
    assert _promtool("check", "rules", RULES_FILE.name, cwd=folder).returncode == 0, "still valid rules"
    result = _promtool("test", "rules", TESTS_FILE.name, cwd=folder)
    assert result.returncode != 0, f"the unit tests did not notice: {description}"
    assert "FAILED" in result.stdout + result.stderr
