"""Benchmark: the drift monitor's false alarms, power and speed, beside Evidently's DataDriftPreset.

Not a test. In one run on this machine it

1. fits the model in process (default ``target_encoded_xgboost``, the production
   winner) on green 2021-01, validates it on 2021-02, and builds the version's
   reference profile from those two months as the register step does
   (``build_reference_profile(model, train, val)``); generated TLC-like months from
   ``tests/support/tlc_fixtures`` when ``--data-dir`` lacks the real files;
2. **false alarms**: ``--windows`` windows per size (500 / 2,000 / 10,000 / 60,000 trips)
   resampled with replacement from 2021-02 (the profile's reference month: no drift by
   construction), each judged by ``components.monitoring.drift.detect_drift``; the
   share flagged, with a 95 % Clopper-Pearson interval. Then the **real months**: all of
   2021-02 and all of 2021-03, with their real durations, through ``monitor_window``;
3. **power**: the same resampling from 2021-02 with a shift injected:
   distances x1.3 (the model predicts on the shifted trips, as it would when served);
   the ten busiest pickup zones' share doubled (rows drawn with weights that make it
   so); durations x1.2 with the labels joined (``monitor_window`` must find the accuracy
   degraded: inputs and predictions do not move at all). ``--power-windows`` per size;
4. **Evidently, side by side**: the bench creates its own virtualenv (``--evidently-venv``,
   default ``bench/.venvs/evidently-0.7``, gitignored) with ``pip install 'evidently==0.7.*'``
   and runs ``bench/evidently_drift.py`` in it: ``Report([DataDriftPreset()])`` with its
   defaults on the first ``--evidently-windows`` false-alarm windows of every size (the
   very same trips ours judged), and both tools, each in a fresh process, on one
   ``--speed-rows`` (1,000,000) window resampled from 2021-02, rounds alternating which
   goes first: seconds and peak memory. Evidently gets the whole reference month as its
   reference data (what a user would give it); ours gets the profile.

Memory (both tools measured the same way): the child reads its inputs, collects
garbage, notes its resident set (**base**, VmRSS), resets the kernel's peak mark
(/proc/self/clear_refs) and reads the peak (VmHWM) after the call (**peak**: data
included); **work** = peak - base is what judging the window needed on top. Not
``ru_maxrss``: for a child that a big parent forked it reports at least the parent's
resident set at the fork (the kernel carries the pre-exec peak over), whatever the child does.

    python bench/bench_monitoring.py                       # ~25 minutes on 2 vCPUs (Evidently: ~9 of them)
    python bench/bench_monitoring.py --quick               # small counts, ~2 minutes once the venv exists
    python bench/bench_monitoring.py --no-evidently --windows 2000 --json-out out.json

Seeds are fixed (``--seed``): a rerun draws the same windows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from process_memory import reset_peak, status_kib  # bench/, first on sys.path for a script

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
DEFAULT_DATA_DIR = Path(os.environ.get("TAXI_TLC_DATA_DIR", REPO.parent / "shared" / "data" / "tlc"))
DEFAULT_EVIDENTLY_VENV = BENCH / ".venvs" / "evidently-0.7"
EVIDENTLY_REQUIREMENTS = ("evidently==0.7.*", "pandas<3")  # 0.7.23 imports a helper pandas 3 removed
COLOR, TRAIN_MONTH, VAL_MONTH, NEXT_MONTH = "green", "2021-01", "2021-02", "2021-03"
COLUMNS = ("PULocationID", "DOLocationID", "trip_distance", "prediction")
LABEL = "trip_duration_minutes"

GOAL_FALSE_ALARM = 0.01  # share of no-drift windows flagged, at every size
GOAL_POWER = 0.95  # share of shifted windows flagged, at 2,000 trips and more
GOAL_POWER_MIN_SIZE = 2_000
GOAL_SPEEDUP = 10.0  # Evidently seconds / ours on the big window
TOP_ZONES = 10
CHILD_TIMEOUT_S = 1800.0


# ============================================================================ shared helpers
def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def _result_line(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise ValueError("no RESULT line")


def _run_child(cmd: list[str], what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A child to completion (bounded); its RESULT line."""
    try:
        done = subprocess.run(
            cmd, cwd=REPO, env=env or _child_env(), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{what}: no answer within {CHILD_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    try:
        return _result_line(done.stdout)
    except ValueError:
        raise SystemExit(f"{what} printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}") from None


def rate_with_ci(flagged: int, n: int) -> dict[str, Any]:
    """Share flagged and its exact (Clopper-Pearson) 95 % interval."""
    from scipy.stats import beta

    low = 0.0 if flagged == 0 else float(beta.ppf(0.025, flagged, n - flagged + 1))
    high = 1.0 if flagged == n else float(beta.ppf(0.975, flagged + 1, n - flagged))
    return {"flagged": flagged, "windows": n, "rate": flagged / n if n else None, "ci95": [low, high]}


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# ============================================================================ child: our monitor, timed
def child_speed(spec: dict[str, Any]) -> None:
    """detect_drift on one parquet window against the saved profile, in a fresh process."""
    started = time.perf_counter()
    import pandas as pd

    from components.monitoring.drift import detect_drift
    from components.monitoring.reference_profile import load_profile

    import_s = time.perf_counter() - started
    profile = load_profile(spec["profile"])
    window = pd.read_parquet(spec["window"], columns=list(COLUMNS))
    gc.collect()
    base = status_kib("VmRSS")
    reset = reset_peak()
    began = time.perf_counter()
    report = detect_drift(window, profile).to_dict()
    seconds = time.perf_counter() - began
    peak = status_kib("VmHWM")
    result = {
        "import_s": import_s,
        "rows": len(window),
        "seconds": seconds,
        "base_mb": base / 1024,
        "peak_mb": peak / 1024,
        "peak_reset": reset,
        "verdict": report["verdict"],
        "drifted": [name for name, f in report["features"].items() if f["drifted"]],
    }
    print("RESULT " + json.dumps(result), flush=True)


# ============================================================================ data and model
def bench_months(data_dir: Path, out: Path, generated_rows: int, seed: int) -> tuple[Path, str]:
    """The folder with the three months (the real files, else generated ones in ``out``) and what it is."""
    months = (TRAIN_MONTH, VAL_MONTH, NEXT_MONTH)
    if all((data_dir / f"{COLOR}_tripdata_{m}.parquet").is_file() for m in months):
        return data_dir, f"real TLC files in {data_dir}"
    sys.path.insert(0, str(REPO / "tests"))
    from support.tlc_fixtures import write_tlc_dir

    generated = write_tlc_dir(out / "generated_tlc", months=months, rows=generated_rows, seed=seed)
    return generated, f"GENERATED ({generated_rows} rows/month; real files absent from --data-dir)"


class Setup:
    """The fitted model, its reference profile and the months as the monitor sees them."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        import numpy as np

        from components.data.ingest import load_month
        from components.features.design_matrix import vectorize_trips
        from components.models.train import fit_candidate
        from components.monitoring.reference_profile import build_reference_profile

        self.data_dir, self.data_source = bench_months(args.data_dir, scratch, args.generated_rows, args.seed)
        began = time.perf_counter()
        train, _ = load_month(COLOR, TRAIN_MONTH, data_dir=self.data_dir)
        val, _ = load_month(COLOR, VAL_MONTH, data_dir=self.data_dir)
        nxt, _ = load_month(COLOR, NEXT_MONTH, data_dir=self.data_dir)
        vectorizer, x_train, x_val = vectorize_trips(train, val)
        self.model, scores = fit_candidate(args.candidate, {}, vectorizer, x_train, x_val)
        self.fit_s = time.perf_counter() - began
        began = time.perf_counter()
        self.profile = build_reference_profile(self.model, train, val)
        self.profile_s = time.perf_counter() - began
        self.val_trips = val
        self.val_rmse = scores.rmse
        self.rows = {TRAIN_MONTH: len(train), VAL_MONTH: len(val), NEXT_MONTH: len(nxt)}
        self.val = self.frame(val)
        self.next = self.frame(nxt)
        # The ten busiest pickup zones of the reference month.
        counts = np.bincount(self.val["PULocationID"].to_numpy())
        self.top_zones = [int(z) for z in np.argsort(counts)[::-1][:TOP_ZONES]]
        self.top_share = float(self.val["PULocationID"].isin(self.top_zones).mean())

    def frame(self, trips: Any) -> Any:
        """Cleaned trips as logged traffic: integer zone ids, distance, the model's minutes, the label."""
        import pandas as pd

        return pd.DataFrame(
            {
                "PULocationID": pd.to_numeric(trips["PULocationID"]).to_numpy(dtype="int64"),
                "DOLocationID": pd.to_numeric(trips["DOLocationID"]).to_numpy(dtype="int64"),
                "trip_distance": trips["trip_distance"].to_numpy(dtype="float64"),
                "prediction": self.model.predict(trips).astype("float64"),
                LABEL: trips[LABEL].to_numpy(dtype="float64"),
            }
        )


def _rng(seed: int, scenario: int, size: int) -> Any:
    import numpy as np

    return np.random.default_rng([seed, scenario, size])


def draw_rows(rng: Any, n_rows: int, size: int, weights: Any = None) -> Any:
    """Row numbers of one window: ``size`` draws with replacement, uniform or by ``weights``."""
    if weights is None:
        return rng.integers(0, n_rows, size=size)
    return rng.choice(n_rows, size=size, replace=True, p=weights)


# ============================================================================ our monitor: windows
def judge_windows(
    frame: Any,
    sizes: Sequence[int],
    n_windows: int,
    seed: int,
    scenario: int,
    judge: Callable[[Any], tuple[bool, list[str]]],
    weights: Any = None,
    keep: int = 0,
) -> tuple[dict[str, Any], dict[int, list[Any]]]:
    """``n_windows`` windows per size drawn from ``frame``; per size the share ``judge`` flags.

    Returns the results and, per size, the row numbers of the first ``keep`` windows
    (so Evidently judges the very same trips).
    """
    results: dict[str, Any] = {}
    kept: dict[int, list[Any]] = {}
    for size in sizes:
        rng = _rng(seed, scenario, size)
        flags: list[bool] = []
        features: dict[str, int] = {}
        began = time.perf_counter()
        kept[size] = []
        for i in range(n_windows):
            rows = draw_rows(rng, len(frame), size, weights)
            if i < keep:
                kept[size].append(rows)
            flagged, which = judge(frame.iloc[rows].reset_index(drop=True))
            flags.append(flagged)
            for name in which:
                features[name] = features.get(name, 0) + 1
        seconds = time.perf_counter() - began
        results[str(size)] = {
            **rate_with_ci(sum(flags), n_windows),
            "by_feature": features,
            "flags": flags,
            "seconds_per_window": seconds / n_windows,
        }
        r = results[str(size)]
        _progress(
            f"  {size:>7,} trips: {r['flagged']}/{n_windows} flagged ({r['rate']:.1%}), "
            f"{r['seconds_per_window'] * 1000:.1f} ms/window {features or ''}"
        )
    return results, kept


def drift_judge(profile: Any) -> Callable[[Any], tuple[bool, list[str]]]:
    from components.monitoring.drift import detect_drift

    def judge(window: Any) -> tuple[bool, list[str]]:
        report = detect_drift(window.loc[:, list(COLUMNS)], profile)
        return report.detected, [name for name, f in report.features.items() if f.drifted]

    return judge


def accuracy_judge(profile: Any) -> Callable[[Any], tuple[bool, list[str]]]:
    from components.monitoring.monitor import monitor_window

    def judge(window: Any) -> tuple[bool, list[str]]:
        verdict = monitor_window(window, profile, model_version="bench", start="", end="")
        which = [name for name, f in verdict["drift"]["features"].items() if f["drifted"]]
        if verdict["accuracy"]["degraded"]:
            which.append("accuracy")
        return verdict["accuracy"]["degraded"], which

    return judge


def real_months(setup: Setup) -> dict[str, Any]:
    """Whole real months with their real durations, through monitor_window."""
    from components.monitoring.monitor import monitor_window

    out = {}
    for month, frame in ((VAL_MONTH, setup.val), (NEXT_MONTH, setup.next)):
        began = time.perf_counter()
        verdict = monitor_window(frame, setup.profile, model_version="bench", start=month, end=month)
        out[month] = {
            "seconds": time.perf_counter() - began,
            "trips": len(frame),
            "verdict": verdict["verdict"],
            "drift_detected": verdict["drift"]["detected"],
            "features": verdict["drift"]["features"],
            "accuracy": verdict["accuracy"],
        }
        acc = verdict["accuracy"]
        _progress(
            f"  {month}: {len(frame):,} trips, verdict {verdict['verdict']}, rmse {acc['rmse']:.3f} "
            f"(baseline {acc['baseline_rmse']:.3f}, CI {acc['rmse_ci'][0]:.3f}-{acc['rmse_ci'][1]:.3f})"
        )
    return out


def power(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    # Distances x1.3: the served model would predict on the shifted trips.
    shifted_trips = setup.val_trips.copy()
    shifted_trips["trip_distance"] = shifted_trips["trip_distance"] * 1.3
    distance = setup.frame(shifted_trips)
    _progress("power: distances x1.3")
    out["distance x1.3"], _ = judge_windows(
        distance, args.sizes, args.power_windows, args.seed, 2, drift_judge(setup.profile)
    )
    # The ten busiest pickup zones' share doubled: rows drawn with weights that make it so.
    in_top = setup.val["PULocationID"].isin(setup.top_zones).to_numpy()
    target = min(2 * setup.top_share, 1.0)
    weights = np.where(in_top, target / in_top.sum(), (1.0 - target) / (~in_top).sum())
    weights /= weights.sum()
    _progress(f"power: top-{TOP_ZONES} pickup zones' share {setup.top_share:.1%} -> {target:.1%}")
    out["top-10 pickup share x2"], _ = judge_windows(
        setup.val, args.sizes, args.power_windows, args.seed, 3, drift_judge(setup.profile), weights
    )
    # Durations x1.2 with labels: nothing the model sees moves; only accuracy can tell.
    slower = setup.val.copy()
    slower[LABEL] = slower[LABEL] * 1.2
    _progress("power: durations x1.2 (labelled; accuracy degraded must be found)")
    out["durations x1.2 (accuracy)"], _ = judge_windows(
        slower, args.sizes, args.power_windows, args.seed, 4, accuracy_judge(setup.profile)
    )
    return out


# ============================================================================ Evidently
def evidently_python(venv: Path) -> tuple[Path, str]:
    """The venv's interpreter, created and filled with Evidently 0.7 on first use; and its version."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import evidently; print(evidently.__version__)"]
    if python.is_file():
        done = subprocess.run(probe, capture_output=True, text=True, timeout=300)
        if done.returncode == 0 and done.stdout.strip().startswith("0.7."):
            return python, done.stdout.strip()
    _progress(f"evidently: creating {venv} and installing {' '.join(EVIDENTLY_REQUIREMENTS)} from PyPI ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *EVIDENTLY_REQUIREMENTS], check=True, timeout=1800
    )
    done = subprocess.run(probe, capture_output=True, text=True, timeout=300, check=True)
    return python, done.stdout.strip()


def run_evidently(python: Path, mode: str, reference: Path, windows: Path, scratch: Path) -> dict[str, Any]:
    spec = scratch / f"evidently-{mode}-{windows.stem}.json"
    spec.write_text(json.dumps({"mode": mode, "reference": str(reference), "windows": str(windows)}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["DO_NOT_TRACK"] = "1"  # Evidently's telemetry off
    return _run_child([str(python), str(BENCH / "evidently_drift.py"), str(spec)], f"evidently {mode}", env)


def run_ours_speed(profile: Path, window: Path) -> dict[str, Any]:
    spec = json.dumps({"profile": str(profile), "window": str(window)})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "speed", "--spec", spec]
    return _run_child(cmd, "our monitor (speed)")


def side_by_side(
    setup: Setup, args: argparse.Namespace, scratch: Path, kept: dict[int, list[Any]], ours_fa: dict[str, Any]
) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from components.monitoring.reference_profile import save_profile

    python, version = evidently_python(args.evidently_venv)
    _progress(f"evidently {version} in {args.evidently_venv}")
    reference = scratch / "reference.parquet"
    setup.val.loc[:, list(COLUMNS)].to_parquet(reference, index=False)
    profile = scratch / "reference_profile.json"
    save_profile(setup.profile, profile)

    # Agreement: Evidently on the first windows ours judged, size by size.
    agreement: dict[str, Any] = {}
    for size, windows in kept.items():
        if not windows:
            continue
        rows = pd.DataFrame(
            {
                "window_id": np.repeat(np.arange(len(windows)), size),
                "row": np.concatenate(windows),
            }
        )
        path = scratch / f"windows-{size}.parquet"
        rows.to_parquet(path, index=False)
        _progress(f"evidently: {len(windows)} false-alarm windows of {size:,} trips ...")
        result = run_evidently(python, "windows", reference, path, scratch)
        per = result["windows"]
        methods = {name: c["method"] for name, c in per[0]["columns"].items()}
        ours_flags = ours_fa[str(size)]["flags"][: len(windows)]
        agreement[str(size)] = {
            "windows": len(per),
            "methods": methods,
            "thresholds": {name: c["threshold"] for name, c in per[0]["columns"].items()},
            "any_column": rate_with_ci(sum(w["any_column"] for w in per), len(per)),
            "dataset_drift": rate_with_ci(sum(w["dataset_drift"] for w in per), len(per)),
            "by_column": {
                name: sum(w["columns"][name]["drifted"] for w in per) for name in per[0]["columns"]
            },
            "count_agrees": all(w["count_agrees"] for w in per),
            "seconds_per_window": _median([w["seconds"] for w in per]),
            "ours": rate_with_ci(sum(ours_flags), len(ours_flags)),
        }
        a = agreement[str(size)]
        _progress(
            f"  {size:>7,}: evidently any column {a['any_column']['rate']:.1%}, dataset drift "
            f"{a['dataset_drift']['rate']:.1%}; ours {a['ours']['rate']:.1%} on the same windows"
        )

    # Speed: one big window, each tool in a fresh process, rounds alternating who goes first.
    big = scratch / f"window-{args.speed_rows}.parquet"
    rows = draw_rows(_rng(args.seed, 9, args.speed_rows), len(setup.val), args.speed_rows)
    setup.val.iloc[rows].loc[:, list(COLUMNS)].reset_index(drop=True).to_parquet(big, index=False)
    speed: dict[str, list[dict[str, Any]]] = {"ours": [], "evidently": []}
    for round_no in range(1, args.speed_rounds + 1):
        order = ("ours", "evidently") if round_no % 2 else ("evidently", "ours")
        for tool in order:
            load = os.getloadavg()[0]
            if tool == "ours":
                r = run_ours_speed(profile, big)
            else:
                r = run_evidently(python, "speed", reference, big, scratch)
            r |= {"round": round_no, "load1_before": load}
            speed[tool].append(r)
            _progress(
                f"  speed r{round_no} {tool:<9}: {r['seconds']:.3f} s, peak {r['peak_mb']:.0f} MB "
                f"(base {r['base_mb']:.0f}), load {load:.2f}"
            )
    ratios = [e["seconds"] / o["seconds"] for o, e in zip(speed["ours"], speed["evidently"], strict=True)]
    return {
        "evidently_version": version,
        "evidently_venv": str(args.evidently_venv),
        "agreement": agreement,
        "speed": speed,
        "speed_rows": args.speed_rows,
        "speedup_per_round": ratios,
        "speedup_median": _median(ratios),
    }


# ============================================================================ report
def _rate(r: dict[str, Any]) -> str:
    low, high = r["ci95"]
    return (
        f"{r['flagged']:>4}/{r['windows']:<4} {r['rate'] * 100:5.1f}%  [{low * 100:4.1f}-{high * 100:5.1f}]"
    )


def goals(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fa = report["false_alarms"]
    worst = max(r["rate"] for r in fa.values())
    out["false_alarms"] = {
        "goal": f"<= {GOAL_FALSE_ALARM:.0%} of resampled no-drift windows flagged, every size",
        "worst_rate": worst,
        "met": worst <= GOAL_FALSE_ALARM,
    }
    months = report["real_months"]
    out["real_months"] = {
        "goal": f"no drift flagged on {VAL_MONTH} and {NEXT_MONTH} (a {TRAIN_MONTH} model)",
        "flagged": [m for m, r in months.items() if r["drift_detected"]],
        "met": not any(r["drift_detected"] for r in months.values()),
    }
    for scenario, per_size in report["power"].items():
        judged = {s: r["rate"] for s, r in per_size.items() if int(s) >= GOAL_POWER_MIN_SIZE}
        out[f"power: {scenario}"] = {
            "goal": f">= {GOAL_POWER:.0%} flagged at {GOAL_POWER_MIN_SIZE:,} trips and more",
            "rates": judged,
            "met": bool(judged) and min(judged.values()) >= GOAL_POWER,
        }
    side = report.get("evidently")
    if side:
        out["speed"] = {
            "goal": f">= {GOAL_SPEEDUP:g}x faster than Evidently on {side['speed_rows']:,} rows (median)",
            "speedup": side["speedup_median"],
            "met": side["speedup_median"] >= GOAL_SPEEDUP,
        }
        fewer = {
            size: {
                "ours": a["ours"]["rate"],
                "evidently_any_column": a["any_column"]["rate"],
                "evidently_dataset_drift": a["dataset_drift"]["rate"],
            }
            for size, a in side["agreement"].items()
        }
        # Where neither tool raises any alarm there is nothing to be fewer than: a tie, listed apart.
        out["fewer_false_alarms"] = {
            "goal": "fewer false alarms than Evidently on the same windows, every size (0 = 0 is a tie)",
            "ties": [s for s, r in fewer.items() if r["ours"] == r["evidently_any_column"] == 0],
            "met_vs_any_column": all(
                r["ours"] < r["evidently_any_column"] or r["ours"] == r["evidently_any_column"] == 0
                for r in fewer.values()
            ),
            "met_vs_dataset_drift": all(
                r["ours"] < r["evidently_dataset_drift"] or r["ours"] == r["evidently_dataset_drift"] == 0
                for r in fewer.values()
            ),
        }
    return out


def print_report(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print()
    print(
        f"monitoring benchmark: {meta['cpus']} CPUs, Python {meta['python']}, "
        f"load average at start {meta['loadavg_start'][0]:.2f}, at end {meta['loadavg_end'][0]:.2f}"
    )
    m = meta["model"]
    print(
        f"model: {m['candidate']} loaded + fitted in {m['fit_s']:.1f} s on {TRAIN_MONTH} "
        f"({m['rows'][TRAIN_MONTH]:,} trips), validation RMSE {m['val_rmse']:.3f} on {VAL_MONTH} "
        f"({m['rows'][VAL_MONTH]:,}); profile in {m['profile_s']:.1f} s; {meta['data_source']}"
    )
    print(f"drift policy: {meta['policy']}")
    print()
    print(
        "false alarms: windows resampled (with replacement) from the reference month; 95% Clopper-Pearson CI"
    )
    print(
        f"{'window trips':>13}  {'flagged / windows   rate  [95% CI]':<36}{'ms/window':>10}  features flagged"
    )
    for size, r in report["false_alarms"].items():
        print(
            f"{int(size):>13,}  {_rate(r):<36}{r['seconds_per_window'] * 1000:>10.1f}  "
            f"{r['by_feature'] or '-'}"
        )
    print()
    print("real months, whole, labelled (monitor_window):")
    for month, r in report["real_months"].items():
        acc = r["accuracy"]
        effects = ", ".join(f"{n} {f['effect']:.3f}/{f['min_effect']:g}" for n, f in r["features"].items())
        print(
            f"  {month}: {r['trips']:,} trips -> {r['verdict']}; drift {r['drift_detected']}; "
            f"rmse {acc['rmse']:.3f} CI [{acc['rmse_ci'][0]:.3f}, {acc['rmse_ci'][1]:.3f}] vs "
            f"{acc['baseline_rmse']:.3f}; effect/min: {effects}"
        )
    print()
    print("power: injected shifts on windows resampled from the reference month")
    print(f"{'scenario':<28}{'window trips':>13}  {'flagged / windows   rate  [95% CI]':<36}features flagged")
    for scenario, per_size in report["power"].items():
        for size, r in per_size.items():
            print(f"{scenario:<28}{int(size):>13,}  {_rate(r):<36}{r['by_feature'] or '-'}")
    side = report.get("evidently")
    if side:
        print()
        print(
            f"Evidently {side['evidently_version']} DataDriftPreset (defaults) "
            "on the same false-alarm windows:"
        )
        first = next(iter(side["agreement"].values()), None)
        if first:
            tests = ", ".join(
                f"{n}: {meth} (threshold {first['thresholds'][n]:g})" for n, meth in first["methods"].items()
            )
            print(f"  tests it picked: {tests}")
        print(
            f"{'window trips':>13}  {'ours':<36}{'evidently: any column drifted':<38}"
            f"{'evidently: dataset drift (>=50% columns)':<42}{'s/window':>9}"
        )
        for size, a in side["agreement"].items():
            print(
                f"{int(size):>13,}  {_rate(a['ours']):<36}{_rate(a['any_column']):<38}"
                f"{_rate(a['dataset_drift']):<42}{a['seconds_per_window']:>9.3f}"
            )
            print(f"{'':>15}evidently per column: {a['by_column']}")
        print()
        print(
            f"speed on one window of {side['speed_rows']:,} trips "
            "(fresh process each; seconds = the call only):"
        )
        for tool, runs in side["speed"].items():
            for r in runs:
                extra = "" if tool == "ours" else f" dataset drift {r['verdict']['dataset_drift']}"
                verdict = (
                    r["verdict"] if tool == "ours" else ("drift" if r["verdict"]["any_column"] else "ok")
                )
                print(
                    f"  {tool:<10} r{r['round']}: {r['seconds']:8.3f} s  peak {r['peak_mb']:7.0f} MB  "
                    f"base {r['base_mb']:6.0f} MB  work {r['peak_mb'] - r['base_mb']:6.0f} MB  "
                    f"import {r['import_s']:.1f} s  load {r['load1_before']:.2f}  verdict {verdict}{extra}"
                )
        print(
            "  speedup evidently/ours per round: "
            + " ".join(f"x{v:.1f}" for v in side["speedup_per_round"])
            + f" (median x{side['speedup_median']:.1f})"
        )
    print()
    for name, g in report["goals"].items():
        state = {k: v for k, v in g.items() if k != "goal"}
        print(f"goal {name}: {g['goal']}: {state}")


# ============================================================================ main
def _sizes(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive comma-separated sizes, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="TLC files (green 2021-01/02/03)")
    p.add_argument("--candidate", default="target_encoded_xgboost", help="the model to fit and profile")
    p.add_argument("--quick", action="store_true", help="smoke run: small counts")
    p.add_argument("--sizes", type=_sizes, default=[500, 2_000, 10_000, 60_000], help="window sizes (trips)")
    p.add_argument("--windows", type=int, default=None, help="false-alarm windows per size (default 1000)")
    p.add_argument("--power-windows", type=int, default=None, help="shifted windows per size (default 200)")
    p.add_argument("--evidently-windows", type=int, default=None, help="of those, Evidently judges (200)")
    p.add_argument("--speed-rows", type=int, default=None, help="trips in the speed window (1,000,000)")
    p.add_argument("--speed-rounds", type=int, default=None, help="alternating speed rounds (default 3)")
    p.add_argument("--no-evidently", action="store_true", help="skip the Evidently comparison")
    p.add_argument("--evidently-venv", type=Path, default=DEFAULT_EVIDENTLY_VENV)
    p.add_argument("--generated-rows", type=int, default=20_000, help="rows/month if data is generated")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--child", choices=("speed",), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    quick = args.quick
    args.windows = args.windows or (20 if quick else 1_000)
    args.power_windows = args.power_windows or (10 if quick else 200)
    args.evidently_windows = min(args.evidently_windows or (3 if quick else 200), args.windows)
    args.speed_rows = args.speed_rows or (100_000 if quick else 1_000_000)
    args.speed_rounds = args.speed_rounds or (1 if quick else 3)
    return args


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("numpy", "pandas", "scipy", "xgboost", "scikit-learn", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_speed(json.loads(args.spec))
        return 0
    from dataclasses import asdict

    from components.monitoring.drift import DriftPolicy

    loadavg_start = os.getloadavg()
    if loadavg_start[0] > 1.0:
        _progress(f"note: 1-minute load average is {loadavg_start[0]:.2f}: other work is running")
    with tempfile.TemporaryDirectory(prefix="bench_monitoring_") as tmp:
        scratch = Path(tmp)
        _progress(f"model: fitting {args.candidate} and building the reference profile ...")
        setup = Setup(args, scratch)
        _progress(f"false alarms: {args.windows} windows per size resampled from {VAL_MONTH}")
        fa, kept = judge_windows(
            setup.val, args.sizes, args.windows, args.seed, 1, drift_judge(setup.profile),
            keep=0 if args.no_evidently else args.evidently_windows,
        )  # fmt: skip
        _progress("real months:")
        months = real_months(setup)
        pw = power(setup, args)
        side = None if args.no_evidently else side_by_side(setup, args, scratch, kept, fa)
        report: dict[str, Any] = {
            "meta": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "versions": _versions(),
                "loadavg_start": loadavg_start,
                "loadavg_end": os.getloadavg(),
                "data_source": setup.data_source,
                "seed": args.seed,
                "policy": {k: v for k, v in asdict(DriftPolicy()).items()},
                "model": {
                    "candidate": args.candidate,
                    "fit_s": setup.fit_s,
                    "profile_s": setup.profile_s,
                    "val_rmse": setup.val_rmse,
                    "rows": setup.rows,
                    "top_zones": setup.top_zones,
                    "top_zones_share": setup.top_share,
                },
                "windows": args.windows,
                "power_windows": args.power_windows,
            },
            "false_alarms": fa,
            "real_months": months,
            "power": pw,
        }
        if side:
            report["evidently"] = side
        report["goals"] = goals(report)
        print_report(report)
        if args.json_out:
            args.json_out.write_text(json.dumps(report, indent=1))
            print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
