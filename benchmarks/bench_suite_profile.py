"""Where a suite's time goes, from its run records (not a timed test; numbers go in the docs).

Every record carries ``cost.profile``: seconds of training (``train_s``), of the mid-training
curve points (``curve_s``), of sampling over the NFE grid (``sampling_s``), of the model's own
likelihood (``likelihood_s``) and of the sample metrics (``sample_metrics_s``), plus the run's
start and finish times. ``train_s`` here is the record's ``train.seconds`` (summed over the
attempts of a run resumed from a training checkpoint; the profile holds only the last
process's); the other phases and ``run_s`` are the last attempt's, and the ``resumed`` column
counts such runs. This script tabulates them per method and dataset (mean over seeds),
sums them, and reports the wall time of the whole folder (first start to last finish), so a
change to the host can be judged by the phase it should shorten.

    python benchmarks/bench_suite_profile.py RESULTS [--markdown]

To time the suite itself, run it into an empty folder first, e.g.
``time gmbench run --plugins all --budget small --out /tmp/suite`` (add ``--jobs 2`` on two
cores), then point this script at ``/tmp/suite``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import pandas as pd
from tabulate import tabulate

PHASES = ("train_s", "curve_s", "sampling_s", "likelihood_s", "sample_metrics_s")


def load(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("source") != "trained" or rec.get("status") != "ok":
            continue
        profile = (rec.get("cost") or {}).get("profile") or {}
        label = rec["method"] + ("[" + ", ".join(f"{k}={v}" for k, v in sorted((rec.get("hparams") or {}).items())) + "]"
                                 if rec.get("hparams") else "")
        start, end = (datetime.fromisoformat(rec[k]) for k in ("started_at", "finished_at"))
        phases = {p: float(profile.get(p) or 0.0) for p in PHASES}
        # the profile times the process that wrote the record; a run resumed from a training
        # checkpoint trained partly in earlier processes, which `train.seconds` sums
        phases["train_s"] = float((rec.get("train") or {}).get("seconds") or phases["train_s"])
        rows.append({"method": label, "default": not rec.get("hparams"), "dataset": rec["dataset"], "seed": rec["seed"],
                     **phases,
                     "run_s": (end - start).total_seconds(), "resumed": bool(rec.get("resumed")),
                     "start": start, "end": end})
    if not rows:
        raise SystemExit(f"{folder}: no ok trained records")
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print GitHub markdown tables")
    args = ap.parse_args()
    df = load(args.results)
    fmt = "github" if args.markdown else "simple"
    per = df.groupby(["dataset", "method"])[[*PHASES, "run_s"]].mean().round(1)
    per["seeds"] = df.groupby(["dataset", "method"]).size()
    per["resumed"] = df.groupby(["dataset", "method"])["resumed"].sum()  # their run_s is the last attempt's
    print(tabulate(per.reset_index(), headers="keys", tablefmt=fmt, showindex=False))
    total = df[[*PHASES, "run_s"]].sum()
    print()
    print(tabulate([[f"{total[p]:.0f}", f"{100 * total[p] / total['run_s']:.0f}%"] for p in [*PHASES, "run_s"]],
                   headers=["summed seconds", "share of run time"], tablefmt=fmt,
                   showindex=[*PHASES, "run_s (whole runs)"]))
    wall = (df["end"].max() - df["start"].min()).total_seconds()
    print(f"\n{len(df)} runs; wall time of the folder (first start to last finish): {wall:.0f} s "
          f"({wall / 60:.1f} min); summed run time {total['run_s']:.0f} s")
    # what `gmbench run --plugins all` trains: each method's default settings once (mean over seeds)
    default = df[df["default"]].groupby(["dataset", "method"])["train_s"].mean()
    print(f"default settings: {len(default)} method-dataset pairs, training {default.sum():.0f} s summed "
          f"(mean over seeds): the least a one-seed suite of them trains on one core")


if __name__ == "__main__":
    main()
