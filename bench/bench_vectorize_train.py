"""Benchmark: vectorize + train, the course's DictVectorizer vs our TripVectorizer.

Not a test. For (a) one real month and (b) a seeded resample of it to --rows
rows, it measures wall seconds and peak memory of

  REFERENCE  PU_DO = PU + "_" + DO; df[["PU_DO", "trip_distance"]].to_dict("records");
             DictVectorizer().fit_transform; LinearRegression().fit
  OURS       trip_features; TripVectorizer().fit_transform;
             build_estimator("linear_regression", {}).fit (sklearn LinearRegression if absent)

Every (scenario, implementation) runs in its own fresh subprocess, so one run's
freed-but-retained heap cannot inflate or hide another's peak. Inside the child:
load + clean (+ resample) the data, gc, record the resident set ("baseline"),
reset the kernel's peak-RSS high-water mark (/proc/self/clear_refs, Linux),
then time the work and read getrusage(RUSAGE_SELF).ru_maxrss. "peak" is thus
the highest RSS during vectorize+train (data included) and "work" = peak -
baseline is the memory the vectorize+train itself needed. Where the reset is
unavailable, peak is the whole process's and the table says so.

    python bench/bench_vectorize_train.py               # real month + 10M rows
    python bench/bench_vectorize_train.py --quick       # real month + 1M rows
    python bench/bench_vectorize_train.py --json-out bench.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from process_memory import reset_peak, status_kib  # bench/, first on sys.path for a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(os.environ.get("TAXI_TLC_DATA_DIR", REPO.parent / "shared" / "data" / "tlc"))
MONTH_FILE = "green_tripdata_2021-01.parquet"
IMPLS = ("reference", "ours")
FIELDS = ["PULocationID", "DOLocationID", "trip_distance"]


# ----------------------------------------------------------------------- child
def load_month(path: Path):
    """The course's read_dataframe: duration 1..60 minutes, ids as strings."""
    import pandas as pd

    df = pd.read_parquet(path, columns=["lpep_pickup_datetime", "lpep_dropoff_datetime", *FIELDS])
    duration = (df.lpep_dropoff_datetime - df.lpep_pickup_datetime).dt.total_seconds() / 60
    keep = (duration >= 1) & (duration <= 60)
    return pd.DataFrame(
        {
            "PULocationID": df.PULocationID[keep].astype(str),
            "DOLocationID": df.DOLocationID[keep].astype(str),
            "trip_distance": df.trip_distance[keep],
            "duration": duration[keep],
        }
    ).reset_index(drop=True)


def load_scenario(data_dir: Path, rows: int, seed: int):
    import numpy as np

    month = load_month(data_dir / MONTH_FILE)
    if rows <= 0:
        return month
    picks = np.random.default_rng(seed).integers(0, len(month), rows)
    return month.take(picks).reset_index(drop=True)


def run_reference(df):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression

    t0 = time.perf_counter()
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    dicts = df[["PU_DO", "trip_distance"]].to_dict(orient="records")
    t_features = time.perf_counter()
    X = DictVectorizer().fit_transform(dicts)
    del dicts  # freed before training (the course keeps them alive: this favours the reference)
    t1 = time.perf_counter()
    model = LinearRegression().fit(X, df["duration"].to_numpy())
    t2 = time.perf_counter()
    return X, model, t_features - t0, t1 - t0, t2 - t1, "sklearn.LinearRegression"


def run_ours(df):
    from components.features.trip_features import trip_features
    from components.features.vectorizer import TripVectorizer

    try:
        from components.models.candidates import build_estimator

        estimator, label = build_estimator("linear_regression", {}), "candidates.build_estimator"
    except ImportError:
        from sklearn.linear_model import LinearRegression

        estimator, label = LinearRegression(), "sklearn.LinearRegression"
    t0 = time.perf_counter()
    features = trip_features(df)
    t_features = time.perf_counter()
    X = TripVectorizer().fit_transform(features)
    t1 = time.perf_counter()
    model = estimator.fit(X, df["duration"].to_numpy())
    t2 = time.perf_counter()
    return X, model, t_features - t0, t1 - t0, t2 - t1, label


def child_main(impl: str, data_dir: Path, rows: int, seed: int) -> None:
    import numpy as np

    df = load_scenario(data_dir, rows, seed)
    gc.collect()
    baseline = status_kib("VmRSS")
    reset = reset_peak()
    X, model, features_s, vec_s, train_s, estimator = (run_reference if impl == "reference" else run_ours)(df)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    y = df["duration"].to_numpy()
    rmse = float(np.sqrt(np.mean((model.predict(X) - y) ** 2)))  # same model => same number
    result = {
        "impl": impl,
        "rows": len(df),
        "n_features": int(X.shape[1]),
        "index_dtype": str(X.indices.dtype),
        "estimator": estimator,
        "features_s": features_s,  # part of vectorize_s: PU_DO + dicts / trip_features
        "vectorize_s": vec_s,
        "train_s": train_s,
        "total_s": vec_s + train_s,
        "baseline_rss_mb": baseline / 1024,
        "peak_rss_mb": peak / 1024,
        "work_rss_mb": (peak - baseline) / 1024,
        "peak_reset": reset,
        "train_rmse": rmse,
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------- parent
def run_child(impl: str, data_dir: Path, rows: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--data-dir", str(data_dir), "--rows", str(rows)]
    cmd += ["--seed", str(seed)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    wall = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"child {impl} rows={rows} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["child_wall_s"] = time.perf_counter() - wall
    result["loadavg_1m_after"] = os.getloadavg()[0]  # >~2 on 2 cores: someone else was busy too
    return result


def print_table(results: list[dict]) -> None:
    head = (
        f"{'scenario':<22}{'impl':<10}{'rows':>11}{'features s':>12}{'vectorize s':>13}"
        f"{'train s':>10}{'total s':>10}"
        f"{'peak MB':>10}{'base MB':>10}{'work MB':>10}{'train RMSE':>12}{'load':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['scenario']:<22}{r['impl']:<10}{r['rows']:>11,}{r['features_s']:>12.2f}"
            f"{r['vectorize_s']:>13.2f}{r['train_s']:>10.2f}{r['total_s']:>10.2f}{r['peak_rss_mb']:>10.0f}{r['baseline_rss_mb']:>10.0f}"
            f"{r['work_rss_mb']:>10.0f}{r['train_rmse']:>12.4f}{r['loadavg_1m_after']:>6.1f}"
        )
    print()
    print("ratios reference / ours (higher = ours better):")
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        ref, ours = (next(r for r in results if r["scenario"] == scenario and r["impl"] == i) for i in IMPLS)
        ratio = {
            k: ref[k] / ours[k] if ours[k] > 0 else float("inf") for k in ref if k.endswith(("_s", "_mb"))
        }
        print(
            f"  {scenario:<20} vectorize time x{ratio['vectorize_s']:.1f}  total time x{ratio['total_s']:.2f}"
            f"  peak RSS x{ratio['peak_rss_mb']:.2f}  work RSS x{ratio['work_rss_mb']:.1f}"
        )
    if not all(r["peak_reset"] for r in results):
        print("note: peak-RSS reset unavailable; peak includes data loading")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the resampled scale-up")
    parser.add_argument("--quick", action="store_true", help="scale-up of 1M rows instead of --rows")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"holds {MONTH_FILE}")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="runs per (scenario, impl); fastest is shown")
    parser.add_argument("--json-out", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.data_dir, args.rows, args.seed)
        return
    if not (args.data_dir / MONTH_FILE).exists():
        sys.exit(f"{args.data_dir / MONTH_FILE} not found (use --data-dir)")
    rows = 1_000_000 if args.quick else args.rows
    print(
        f"# {platform.node()} {platform.machine()} cpus={os.cpu_count()} python {platform.python_version()}"
        f" loadavg(1m)={os.getloadavg()[0]:.2f} data={args.data_dir / MONTH_FILE}",
        flush=True,
    )
    runs = []
    # The real month is cheap (~3 s a run), so it always gets >= 5 runs against noise.
    for scenario, n, repeat in (
        ("real month", 0, max(5, args.repeat)),
        (f"resampled {rows:,}", rows, args.repeat),
    ):
        for _ in range(max(1, repeat)):
            for impl in IMPLS:  # interleaved, so a burst of outside load hits both
                r = run_child(impl, args.data_dir, n, args.seed)
                r["scenario"] = scenario
                runs.append(r)
                print(
                    f"  done {scenario} {impl}: {r['total_s']:.2f}s, peak {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    results = [
        min((r for r in runs if (r["scenario"], r["impl"]) == key), key=lambda r: r["total_s"])
        for key in dict.fromkeys((r["scenario"], r["impl"]) for r in runs)
    ]
    print()
    print_table(results)
    est = {r["estimator"] for r in results if r["impl"] == "ours"}
    dtypes = {r["impl"]: r["index_dtype"] for r in results}
    print(f"ours trains with {', '.join(est)}; sparse index dtype: {dtypes}")
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"rows": rows, "seed": args.seed, "results": results, "runs": runs}, indent=1)
        )
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
