"""Benchmark: wall time of the README's main command, ``taxi-mlops run --data-dir ...``.

Not a test. Each repetition runs the whole local pipeline (ingest -> vectorize ->
train x 5 -> evaluate -> register -> deploy, through kfp.local) as a subprocess:
the ``taxi-mlops`` script beside this interpreter, in a fresh temporary state dir
(``TAXI_MLOPS_STATE_DIR``, so a new sqlite MLflow store and no champion: every
repetition does the same work), with ``--summary-out``. ``MLFLOW_TRACKING_URI``
is removed from the child's environment so it never talks to a real server.

Per repetition and as the median over repetitions it prints

  wall      seconds from starting the command to its exit (perf_counter)
  steps     the sum of the summary's ``step_seconds`` (the parallel train tasks count once,
            first start to last finish)
  fit sum   the sum of the candidates' own ``train_seconds`` (``estimator.fit`` only)
  fit max   the longest single fit: the candidates train in parallel, so this is
            the part of the wall time the models themselves need at least
  overhead  wall - fit max: process start-ups, imports, MLflow, I/O, evaluation, kfp.local

plus every candidate's validation RMSE and the machine's 1-minute load average
before and after the repetition (a load well above 0 before a run means someone
else shares the cores and the numbers are noisy).

It imports nothing of the project (only subprocess + json), so it measures any
version of the tree. With ``--baseline PATH`` (a checkout of another commit, e.g.
``git worktree add /tmp/before <commit>``) every round runs that tree and then
this one, each first on the child's PYTHONPATH, and it prints both tables and the
per-round ratio of wall times: a baseline measured in the same run, on the same
machine state.

    python bench/bench_pipeline.py                        # 2 repetitions of this tree
    python bench/bench_pipeline.py --repeat 3 --json-out /tmp/bench.json
    python bench/bench_pipeline.py --baseline /tmp/before  # rounds of: before, this tree
    python bench/bench_pipeline.py -- --candidates ridge,xgboost   # extra arguments for `run`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "tlc"
TAXI_MLOPS = Path(sys.executable).parent / "taxi-mlops"


def _child_env(tree: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH", "")]))
    return env


def _source_tree(env: dict[str, str]) -> str:
    """Which checkout the child would import (asked of a child, so this process imports nothing)."""
    probe = "import os, components; print(os.path.dirname(os.path.dirname(components.__file__)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or f"? ({done.stderr.strip().splitlines()[-1:]})"


def run_once(tree: Path, data_dir: Path, extra: list[str], keep: bool) -> dict[str, Any]:
    """One repetition of ``tree``'s main command in a fresh state dir; returns its measurements."""
    state = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    summary_path = state / "summary.json"
    env = _child_env(tree)
    env["TAXI_MLOPS_STATE_DIR"] = str(state)
    command = [str(TAXI_MLOPS), "run", "--data-dir", str(data_dir), "--summary-out", str(summary_path)]
    command += extra
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    # cwd is the state dir, not a checkout: `python -m` (kfp.local's task processes) puts the cwd first
    # on sys.path, which would shadow the PYTHONPATH tree being measured.
    done = subprocess.run(command, env=env, cwd=state, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    (state / "bench-output.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0 or not summary_path.exists():
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"run failed (exit {done.returncode}); state kept in {state}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    fits = {row["name"]: float(row["train_seconds"]) for row in summary["candidates"]}
    result = {
        "wall": wall,
        "steps": sum(float(seconds) for seconds in summary["step_seconds"].values()),
        "fit_sum": sum(fits.values()),
        "fit_max": max(fits.values()),
        "overhead": wall - max(fits.values()),
        "load_before": load_before,
        "load_after": load_after,
        "step_seconds": summary["step_seconds"],
        "train_seconds": fits,
        "rmse": {row["name"]: float(row["rmse"]) for row in summary["candidates"]},
        "winner": summary["winner"],
        "model_version": summary["model_version"],
        "state_dir": str(state) if keep else "",
    }
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
    return result


COLUMNS = ("wall", "steps", "fit_sum", "fit_max", "overhead")


def _row(label: str, values: dict[str, Any], load: str = "") -> str:
    cells = "".join(f"{values[column]:>10.1f}" for column in COLUMNS)
    return f"{label:<8}{cells}  {load}"


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the tables; returns the medians."""
    header = "".join(f"{name:>10}" for name in ("wall s", "steps s", "fit sum", "fit max", "overhead"))
    print(f"{'':<8}{header}  load 1m before -> after")
    for number, result in enumerate(results, 1):
        load = f"{result['load_before']:.2f} -> {result['load_after']:.2f}"
        print(_row(f"run {number}", result, load))
    median = {column: statistics.median(result[column] for result in results) for column in COLUMNS}
    print(_row("median", median))

    steps = list(results[0]["step_seconds"])
    print("\nstep seconds (median):")
    for step in steps:
        print(f"  {step:<14}{statistics.median(r['step_seconds'].get(step, 0.0) for r in results):8.1f}")

    names = sorted(results[0]["rmse"], key=lambda name: results[0]["rmse"][name])
    print(f"\n{'candidate':<24}{'RMSE':>9}{'fit s (median)':>16}   RMSE per run")
    medians_rmse = {}
    for name in names:
        rmses = [result["rmse"][name] for result in results]
        medians_rmse[name] = statistics.median(rmses)
        fit = statistics.median(result["train_seconds"][name] for result in results)
        per_run = " ".join(f"{value:.4f}" for value in rmses)
        print(f"{name:<24}{medians_rmse[name]:>9.4f}{fit:>16.1f}   {per_run}")
    return {**median, "rmse": medians_rmse}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of TLC parquet files")
    parser.add_argument("--repeat", type=int, default=2, help="repetitions (default 2)")
    parser.add_argument("--baseline", type=Path, help="a checkout of another version, run before this tree")
    parser.add_argument("--json-out", type=Path, help="write every measurement as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep each repetition's state dir")
    parser.add_argument("extra", nargs="*", help="after --: extra arguments for `taxi-mlops run`")
    args = parser.parse_args()
    if not TAXI_MLOPS.exists():
        raise SystemExit(f"{TAXI_MLOPS} not found: run this with the project's venv python")
    data_dir = args.data_dir.resolve()
    trees = {"this tree": REPO}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}

    print(f"command: {TAXI_MLOPS.name} run --data-dir {data_dir} {' '.join(args.extra)}".rstrip())
    print(f"{os.cpu_count()} cores; repetitions: {args.repeat}")
    for label, tree in trees.items():
        print(f"{label}: {_source_tree(_child_env(tree))}")
    print()
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    for number in range(1, args.repeat + 1):
        for label, tree in trees.items():
            result = run_once(tree, data_dir, args.extra, args.keep)
            kept = f" (state {result['state_dir']})" if result["state_dir"] else ""
            print(
                f"round {number}, {label}: {result['wall']:.1f} s wall, winner {result['winner']}{kept}",
                flush=True,
            )
            results[label].append(result)
    medians = {}
    for label in trees:
        print(f"\n== {label} ==")
        medians[label] = report(results[label])
    if args.baseline is not None:
        pairs = zip(results["baseline"], results["this tree"], strict=True)
        ratios = [before["wall"] / after["wall"] for before, after in pairs]
        per_round = " ".join(f"{ratio:.2f}" for ratio in ratios)
        median_ratio = statistics.median(ratios)
        print(f"\nwall time, baseline / this tree: per round {per_round}; median {median_ratio:.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps({"runs": results, "median": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
