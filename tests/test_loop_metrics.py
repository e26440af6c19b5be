"""The autopilot's memory as Prometheus series, from real state and timeline files.

The files are written by ``LoopMemory`` -- the writer the loop itself uses -- in a temporary
folder; torn and foreign files are made by hand, as a kill or a careless edit would leave them.
Every exposition is parsed with prometheus_client's parser, as a scrape would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from components.retraining.loop_metrics import KINDS, loop_metrics_from
from components.retraining.loop_state import LoopMemory

NOW = "2021-03-20T00:00:00+00:00"
LATER = "2021-03-20T06:00:00+00:00"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(folder: Path) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(loop_metrics_from(folder))
        for sample in family.samples
    }


def _decision(kind: str, event_time: str = NOW) -> dict[str, object]:
    return {"kind": kind, "event_time": event_time, "model_version": "1", "reason": f"{kind}: test"}


def _retrained(memory: LoopMemory) -> None:
    """A retraining decided and carried out to its gate, as the loop records them."""
    decision = memory.record(_decision("retrain"))
    memory.save()
    memory.record({**_decision("gate", LATER), "decision_seq": decision["seq"], "passed": False})
    memory.save()


def test_no_autopilot_yet_is_readable_and_claims_nothing(tmp_path: Path) -> None:
    assert scrape(tmp_path / "autopilot") == {("taxi_autopilot_state_readable", ()): 1}


def test_a_healthy_loop(tmp_path: Path) -> None:
    folder = tmp_path / "autopilot"
    memory = LoopMemory(folder)
    memory.record(_decision("no_retrain"))
    memory.save()
    _retrained(memory)
    samples = scrape(folder)
    assert samples[("taxi_autopilot_state_readable", ())] == 1
    assert samples[("taxi_autopilot_unreadable_months", ())] == 0
    assert not [name for name, _ in samples if name == "taxi_autopilot_unreadable_month"]
    assert samples[("taxi_autopilot_retraining_running", ())] == 0
    counts = {
        dict(labels)["kind"]: value for (name, labels), value in samples.items() if name.endswith("_total")
    }
    assert counts == {kind: 0 for kind in KINDS} | {"no_retrain": 1, "retrain": 1, "gate": 1}
    # The newest event's event time (the gate's), not when the files were written.
    assert samples[("taxi_autopilot_last_decision_event_time_seconds", ())] == 1616220000.0


def test_an_unreadable_month_is_one_series_per_month(tmp_path: Path) -> None:
    folder = tmp_path / "autopilot"
    memory = LoopMemory(folder)
    memory.state.bad_months["2021-03"] = "green_tripdata_2021-03.parquet: not a parquet file"
    memory.record({**_decision("no_retrain"), "alert": "TaxiTrainingDataUnreadable"})
    memory.save()
    samples = scrape(folder)
    assert samples[("taxi_autopilot_unreadable_months", ())] == 1
    assert samples[("taxi_autopilot_unreadable_month", (("month", "2021-03"),))] == 1
    assert samples[("taxi_autopilot_retraining_running", ())] == 0  # no retraining for it

    memory.state.bad_months['2021-"04'] = "a label value needing escapes"
    memory.save()
    samples = scrape(folder)
    assert samples[("taxi_autopilot_unreadable_months", ())] == 2
    assert samples[("taxi_autopilot_unreadable_month", (("month", '2021-"04'),))] == 1


def test_a_retraining_is_running_until_its_gate_is_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "autopilot"
    memory = LoopMemory(folder)
    decision = memory.record(_decision("retrain"))
    # Killed before state.json was written: the loop would resume it on restart, so it runs.
    assert not memory.state_path.exists()
    assert scrape(folder)[("taxi_autopilot_retraining_running", ())] == 1
    memory.save()
    assert scrape(folder)[("taxi_autopilot_retraining_running", ())] == 1
    memory.record({**_decision("gate", LATER), "decision_seq": decision["seq"], "passed": True})
    memory.save()
    assert scrape(folder)[("taxi_autopilot_retraining_running", ())] == 0


def test_a_torn_timeline_line_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "autopilot"
    memory = LoopMemory(folder)
    _retrained(memory)
    with memory.timeline_path.open("a", encoding="utf-8") as timeline:
        timeline.write('{"kind": "retrain", "se')  # a writer killed mid-append
    samples = scrape(folder)
    assert samples[("taxi_autopilot_state_readable", ())] == 1
    assert samples[("taxi_autopilot_decisions_total", (("kind", "retrain"),))] == 1
    assert samples[("taxi_autopilot_retraining_running", ())] == 0


@pytest.mark.parametrize(
    ("what", "text"),
    [
        ("torn", '{"next_seq": 3, "bad_mon'),
        ("not the loop's fields", '{"cursor": 3}'),
        ("bad_months of the wrong type", '{"bad_months": ["2021-03"]}'),
        ("not UTF-8", b"\xff\xfe{}"),
    ],
)
def test_an_unreadable_state_is_readable_0_and_nothing_else(
    tmp_path: Path, what: str, text: str | bytes
) -> None:
    folder = tmp_path / "autopilot"
    memory = LoopMemory(folder)
    memory.state.bad_months["2021-03"] = "not a parquet file"
    _retrained(memory)
    assert scrape(folder)[("taxi_autopilot_unreadable_months", ())] == 1
    if isinstance(text, bytes):
        memory.state_path.write_bytes(text)
    else:
        memory.state_path.write_text(text, encoding="utf-8")
    assert scrape(folder) == {("taxi_autopilot_state_readable", ()): 0}, what
