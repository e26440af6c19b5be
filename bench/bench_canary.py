"""Benchmark: the canary judge's error rates and speed, on real trips, over many simulated canaries.

Not a test. In one run it

1. fits the champion (``--candidate``, default the production winner) on green
   2021-01 and scores 2021-02, the "live" month, from ``--data-dir`` (generated
   TLC-like months from ``tests/support/tlc_fixtures`` when the real ones are absent);
2. builds canaries that answer the same live trips:

   * **A/A identical**: the champion itself. Its errors equal the champion's trip by
     trip, so the paired interval is exactly [1, 1]: it can never be rolled back on
     accuracy, by construction;
   * **A/A noisy**: the statistics under the null. Champion and canary are each the
     model's predictions plus independent seeded noise of the same size (MAE about
     3% above the model's): equally good in expectation, different on every trip;
   * **+5% MAE**: the champion's predictions plus seeded noise whose size is found
     by bisection so the month's MAE is 5% above the champion's;
   * **+15% minutes**: every prediction 15% too high (the acceptance test's regression);

3. **required labelled trips, paired vs unpaired**: for the +5% canary, the
   fewest labelled trips at which each test says "canary worse" (one-sided 2.5%)
   in at least 90% of draws: the paired bootstrap of the MAE ratio
   (``components.canary.paired_accuracy``, margin 0) vs Mann-Whitney on two
   unrelated samples (each revision's errors on its own trips, as a traffic split
   gives them). Printed as the ratio;
4. **the policy's error rates at its own sample sizes**: draws of exactly
   ``promote_min_labelled`` labelled trips: how often the A/A canaries fail
   (false rollback) and how often the +5% canary fails (caught);
5. **whole canaries**: ``--sims`` seeded canaries per kind, each a stream of
   live trips at ``--rate`` requests/s (resampled from the month, a fresh order
   per canary) split by the canary's percent, labels landing ``--label-delay``
   seconds of traffic after the request, one ``analyze`` every
   ``interval_seconds`` of traffic with the default policy, its action applied --
   until promote or rollback. Reports the share promoted / rolled back / still
   held when the month ran out, and the median traffic time to the verdict.

Time here is traffic time (requests / rate), not this machine's: the numbers do not
depend on its speed.

    python bench/bench_canary.py --data-dir ../shared/data/tlc          # ~10 minutes on 2 cores
    python bench/bench_canary.py --quick                                 # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from components.canary.analysis import Evidence, RevisionOps, analyze  # noqa: E402
from components.canary.paired_accuracy import paired_accuracy  # noqa: E402
from components.canary.policy import CanaryPolicy  # noqa: E402

HEALTHY = 4.0  # ms: the local predictor's p99 at 200 req/s (bench_serving); operations pass in every kind


def load_months(data_dir: Path | None, candidate: str, seed: int) -> dict[str, Any]:
    """Champion and canaries scored on the live month: actual minutes and each model's predictions."""
    from components.data.ingest import load_month
    from components.features.design_matrix import vectorize_trips
    from components.models.train import fit_candidate

    if data_dir is None or not (data_dir / "green_tripdata_2021-01.parquet").exists():
        from support.tlc_fixtures import write_tlc_dir

        data_dir = write_tlc_dir(Path("/tmp/taxi-mlops-bench-canary-tlc"), rows=20_000)
        source = "generated fixtures (20,000 trips a month)"
    else:
        source = str(data_dir)
    train, _ = load_month("green", "2021-01", data_dir=data_dir)
    live, _ = load_month("green", "2021-02", data_dir=data_dir)
    vectorizer, x_train, x_live = vectorize_trips(train, live)
    model, _ = fit_candidate(candidate, None, vectorizer, x_train, x_live)
    rng = np.random.default_rng(seed)
    actual = live["trip_duration_minutes"].to_numpy(dtype=np.float64)
    base = model.predict(live)
    # Same noise size for both sides of the A/A: the scale that makes one side 3% worse.
    scale = _noise_scale(actual, base, 1.03, rng.standard_normal(base.size))
    return {
        "source": source,
        "candidate": candidate,
        "trips": len(live),
        "actual": actual,
        # kind -> (champion's predictions, canary's predictions) of the live month
        "kinds": {
            "A/A identical": (base, base.copy()),
            "A/A noisy": (
                base + scale * rng.standard_normal(base.size),
                base + scale * rng.standard_normal(base.size),
            ),
            "+5% MAE": (base, _with_regression(actual, base, 1.05, rng)),
            "+15% minutes": (base, base * 1.15),
        },
    }


def _noise_scale(actual: np.ndarray, base: np.ndarray, target: float, noise: np.ndarray) -> float:
    """The scale s with MAE(base + s * noise) / MAE(base) == target (bisection)."""
    mae = np.abs(base - actual).mean()
    low, high = 0.0, 50.0
    for _ in range(60):
        middle = (low + high) / 2
        if np.abs(base + middle * noise - actual).mean() / mae < target:
            low = middle
        else:
            high = middle
    return high


def _with_regression(
    actual: np.ndarray, base: np.ndarray, target: float, rng: np.random.Generator
) -> np.ndarray:
    noise = rng.standard_normal(base.size)
    return base + _noise_scale(actual, base, target, noise) * noise


def required_trips(data: dict[str, Any], draws: int, seed: int, resamples: int) -> dict[str, Any]:
    """Fewest labelled trips at which paired and unpaired tests detect the +5% canary in >= 90% of draws."""
    from scipy.stats import mannwhitneyu

    actual = data["actual"]
    champion, canary = data["kinds"]["+5% MAE"]
    rng = np.random.default_rng(seed)
    grid = [100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000]
    grid += [50_000, 75_000, 100_000, 150_000, 200_000]
    powers: dict[str, dict[int, float]] = {"paired": {}, "unpaired": {}}
    found: dict[str, int | None] = {"paired": None, "unpaired": None}
    for n in grid:
        for test in ("paired", "unpaired"):
            if found[test] is not None:
                continue
            hits = 0
            for _ in range(draws):
                if test == "paired":
                    index = rng.integers(0, actual.size, n)
                    result = paired_accuracy(
                        actual[index],
                        champion[index],
                        canary[index],
                        margin=0.0,
                        min_pairs=2,
                        resamples=resamples,
                        seed=int(rng.integers(1 << 31)),
                    )
                    hits += result.ratio_ci is not None and result.ratio_ci[0] > 1.0
                else:
                    # Two unrelated samples of n/2 trips each: the canary's own requests, the champion's own.
                    a = rng.integers(0, actual.size, n // 2)
                    b = rng.integers(0, actual.size, n - n // 2)
                    test_result = mannwhitneyu(
                        np.abs(canary[a] - actual[a]), np.abs(champion[b] - actual[b]), alternative="greater"
                    )
                    hits += test_result.pvalue < 0.025
            powers[test][n] = hits / draws
            if hits / draws >= 0.9:
                found[test] = n
        if all(value is not None for value in found.values()):
            break
    ratio = found["unpaired"] / found["paired"] if found["paired"] and found["unpaired"] else None
    return {"paired": found["paired"], "unpaired": found["unpaired"], "ratio": ratio, "power": powers}


def at_policy_size(data: dict[str, Any], policy: CanaryPolicy, draws: int, seed: int) -> dict[str, Any]:
    """Outcome shares of the paired test on exactly the labelled trips the promotion waits for."""
    n = max(policy.promote_min_labelled, policy.steps[-1].min_labelled)
    rng = np.random.default_rng(seed)
    actual = data["actual"]
    shares: dict[str, dict[str, float]] = {}
    for kind, (champion, canary) in data["kinds"].items():
        counts = {"pass": 0, "fail": 0, "inconclusive": 0}
        for _ in range(draws):
            index = rng.integers(0, actual.size, n)
            result = paired_accuracy(
                actual[index],
                champion[index],
                canary[index],
                margin=policy.mae_margin,
                min_pairs=policy.min_pairs,
                confidence=policy.confidence,
                resamples=policy.resamples,
                seed=int(rng.integers(1 << 31)),
            )
            counts[result.outcome] += 1
        shares[kind] = {outcome: count / draws for outcome, count in counts.items()}
    return {"labelled_trips": n, "draws": draws, "shares": shares}


def simulate(
    data: dict[str, Any], kind: str, policy: CanaryPolicy, *, rate: float, label_delay: float, seed: int
) -> dict[str, Any]:
    """One canary's life on a resampled stream of the live month; the final action and its traffic time."""
    rng = np.random.default_rng(seed)
    actual = data["actual"]
    champion, canary = data["kinds"][kind]
    order = rng.integers(0, actual.size, actual.size)  # one month of traffic, resampled
    per_analysis = max(1, int(policy.interval_seconds * rate))
    delay = int(label_delay * rate)
    percent, sent, consecutive = policy.steps[0].percent, 0, 0
    step_counts = {"champion": 0, "canary": 0}
    analyses = 0
    while sent < order.size:
        batch = min(per_analysis, order.size - sent)
        to_canary = rng.random(batch) < percent / 100
        step_counts["canary"] += int(to_canary.sum())
        step_counts["champion"] += int(batch - to_canary.sum())
        sent += batch
        labelled = order[: max(0, sent - delay)]
        evidence = Evidence(
            champion_version="1",
            canary_version="2",
            percent=percent,
            champion=RevisionOps(step_counts["champion"], 0, HEALTHY),
            canary=RevisionOps(step_counts["canary"], 0, HEALTHY),
            actual=actual[labelled],
            champion_predictions=champion[labelled],
            canary_predictions=canary[labelled],
            consecutive_failures=consecutive,
        )
        analysis = analyze(evidence, replace(policy, seed=int(rng.integers(1 << 31))))
        analyses += 1
        consecutive = consecutive + 1 if analysis.verdict == "fail" else 0
        if analysis.action in ("promote", "rollback"):
            return {
                "action": analysis.action,
                "seconds": sent / rate,
                "analyses": analyses,
                "reason": analysis.reason,
            }
        if analysis.action == "set_percent":
            assert analysis.next_percent is not None
            percent = analysis.next_percent
            step_counts = {"champion": 0, "canary": 0}
    return {"action": "hold", "seconds": sent / rate, "analyses": analyses, "reason": "the month ran out"}


def whole_canaries(
    data: dict[str, Any], policy: CanaryPolicy, sims: int, rate: float, label_delay: float, seed: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for k, kind in enumerate(data["kinds"]):
        runs = [
            simulate(data, kind, policy, rate=rate, label_delay=label_delay, seed=seed + 1000 * k + i)
            for i in range(sims)
        ]
        actions = [run["action"] for run in runs]
        decided = [run["seconds"] for run in runs if run["action"] != "hold"]
        results[kind] = {
            "sims": sims,
            "promoted": actions.count("promote") / sims,
            "rolled_back": actions.count("rollback") / sims,
            "held": actions.count("hold") / sims,
            "median_seconds_to_verdict": float(np.median(decided)) if decided else None,
            "median_analyses": float(np.median([run["analyses"] for run in runs])),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "tlc")
    parser.add_argument("--candidate", default="target_encoded_xgboost")
    parser.add_argument("--sims", type=int, default=200, help="Whole canaries per kind.")
    parser.add_argument(
        "--draws", type=int, default=400, help="Draws per sample size (required trips, error rates)."
    )
    parser.add_argument("--rate", type=float, default=200.0, help="Requests/s of the simulated traffic.")
    parser.add_argument(
        "--label-delay", type=float, default=60.0, help="Seconds of traffic before a label lands."
    )
    parser.add_argument("--seed", type=int, default=20_210_201)
    parser.add_argument("--quick", action="store_true", help="Few sims and draws, ridge: a smoke run.")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.sims, args.draws, args.candidate = 10, 40, "ridge"
    policy = CanaryPolicy()
    started = time.perf_counter()
    data = load_months(args.data_dir, args.candidate, args.seed)
    actual = data["actual"]
    print(f"data: {data['source']}; live month {data['trips']} trips; model {data['candidate']}")
    for kind, (champion, canary) in data["kinds"].items():
        ratio = np.abs(canary - actual).mean() / np.abs(champion - actual).mean()
        print(f"  {kind:<14} canary/champion MAE on the whole month {ratio:.4f}")

    required = required_trips(data, args.draws // 2, args.seed + 1, resamples=500)
    print("\nlabelled trips to see the +5% MAE canary as worse in >= 90% of draws (one-sided 2.5%):")
    print(f"  paired bootstrap   {required['paired']}")
    print(f"  unpaired (Mann-Whitney, two samples) {required['unpaired']}")
    if required["ratio"]:
        print(f"  ratio unpaired/paired: {required['ratio']:.1f}x")

    sized = at_policy_size(data, policy, args.draws, args.seed + 2)
    print(
        f"\npaired test at the promotion's {sized['labelled_trips']} labelled trips "
        f"(margin {policy.mae_margin:.0%}, {sized['draws']} draws):"
    )
    print(f"  {'canary':<16}{'pass':>8}{'fail':>8}{'inconcl.':>10}")
    for kind, shares in sized["shares"].items():
        print(f"  {kind:<16}{shares['pass']:>8.1%}{shares['fail']:>8.1%}{shares['inconclusive']:>10.1%}")

    lives = whole_canaries(data, policy, args.sims, args.rate, args.label_delay, args.seed + 3)
    print(f"\nwhole canaries, default policy, {args.rate:g} req/s, labels land {args.label_delay:g} s later:")
    print(f"  {'canary':<16}{'promoted':>10}{'rolled back':>13}{'held':>7}{'median s':>10}{'analyses':>10}")
    for kind, row in lives.items():
        seconds = f"{row['median_seconds_to_verdict']:.0f}" if row["median_seconds_to_verdict"] else "-"
        print(
            f"  {kind:<16}{row['promoted']:>10.1%}{row['rolled_back']:>13.1%}{row['held']:>7.1%}"
            f"{seconds:>10}{row['median_analyses']:>10.0f}"
        )
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s in all")
    if args.json_out:
        document = {
            "data": data["source"],
            "candidate": data["candidate"],
            "trips": data["trips"],
            "policy": policy.to_dict(),
            "required_trips": required,
            "at_policy_size": sized,
            "whole_canaries": lives,
            "rate": args.rate,
            "label_delay": args.label_delay,
            "seconds": elapsed,
        }
        args.json_out.write_text(json.dumps(document, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
