"""Quality per cost, from run records: what each method pays in sampling NFE, sampling time
and training FLOPs to reach a fixed sample quality (not a timed test; numbers go in the docs).

The method issues' performance tables (docs/quality_per_cost.md), read off published records
rather than re-measured, so the numbers are the boards' own:

* **sampling**: per method, sampler and NFE, the primary metric on the test split (mean over
  seeds), the NFE the host counted (two per midpoint step, the adaptive solver's real count),
  samples per second and milliseconds per sample as the run measured them, and per sampler the
  smallest counted NFE whose mean reaches ``--target``;
* **training**: the primary metric at each curve fraction of the training budget (the run's
  cheap mid-training evaluation: 256 samples for FID, its own sampler and NFE) and the
  training FLOPs at which the mean first reaches ``--curve-target``, interpolated linearly
  in log-FLOPs between the two curve points around it (beyond the budget: "not reached");
* **likelihood**: the seconds each run spent on its test likelihood and the label (exact,
  estimate, bound).

Timings are those of the publication runs, two or three processes sharing two cores: compare
them within a table, not with another machine's.

    python benchmarks/bench_quality_per_cost.py RECORDS --dataset 8gaussians [--target 0.3] [--markdown]
    python benchmarks/bench_quality_per_cost.py RECORDS --dataset digits --target 60 --curve-target 60
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from gmbench.leaderboard import method_label

#: the primary (lower is better) sample metric per modality; text is ranked by bits/char,
#: its sample metric here is the generative perplexity under the suite's reference LM
PRIMARY = {"toy2d": "swd", "image": "fid", "text": "gen_ppl"}


def load(folder: Path, dataset: str) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("dataset") == dataset and rec.get("source") == "trained" and rec.get("status") == "ok":
            records.append(rec)
    if not records:
        raise SystemExit(f"{folder}: no ok trained records on {dataset}")
    return records


def sampling_table(records: list[dict], metric: str) -> pd.DataFrame:
    rows = []
    for rec in records:
        speed = {(s["sampler"], s["nfe"]): s for s in (rec.get("cost") or {}).get("sampling") or []}
        for m in rec["metrics"]:
            if m["name"] != metric or m.get("split") != "test" or m["sampler"] is None:
                continue
            s = speed.get((m["sampler"], m["nfe"]), {})
            rows.append({"method": method_label(rec), "sampler": m["sampler"], "nfe": m["nfe"], "seed": rec["seed"],
                         "counted_nfe": s.get("nfe_counted", m["nfe"]), metric: m["value"],
                         "samples_per_s": s.get("samples_per_s", math.nan)})
    df = pd.DataFrame(rows)
    return df.groupby(["method", "sampler", "nfe"], as_index=False).agg(
        counted_nfe=("counted_nfe", "mean"), value=(metric, "mean"), samples_per_s=("samples_per_s", "mean"),
        seeds=("seed", "nunique"))


def reach_table(per_nfe: pd.DataFrame, target: float) -> pd.DataFrame:
    rows = []
    for (method, sampler), g in per_nfe.groupby(["method", "sampler"]):
        g = g.sort_values("counted_nfe")
        hit = g[g["value"] <= target]
        best = g.loc[g["value"].idxmin()]
        if len(hit):
            first = hit.iloc[0]
            rows.append({"method": method, "sampler": sampler, "counted NFE to reach": int(first["counted_nfe"]),
                         "value there": first["value"], "ms per sample there": 1000 / first["samples_per_s"],
                         "best value (counted NFE)": f"{best['value']:.3g} ({int(best['counted_nfe'])})"})
        else:
            rows.append({"method": method, "sampler": sampler, "counted NFE to reach": "not reached",
                         "value there": math.nan, "ms per sample there": math.nan,
                         "best value (counted NFE)": f"{best['value']:.3g} ({int(best['counted_nfe'])})"})
    out = pd.DataFrame(rows)
    # reached first, cheapest first; then the rest by their best value
    out["_order"] = out["counted NFE to reach"].map(lambda v: v if isinstance(v, int) else math.inf)
    return out.sort_values(["_order", "method"]).drop(columns="_order")


def curve_table(records: list[dict], metric: str, target: float | None) -> pd.DataFrame:
    rows = [{"method": method_label(rec), "seed": rec["seed"], "fraction": c["fraction"], "flops": c["flops"],
             "value": c["value"], "how": f"{c.get('sampler') or 'model'}@{c.get('nfe') or '-'}, n={c['n']}"}
            for rec in records for c in rec.get("curve") or [] if c.get("metric") == metric and c.get("value") is not None]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).groupby(["method", "fraction"], as_index=False).agg(
        flops=("flops", "mean"), value=("value", "mean"), how=("how", "first"), seeds=("seed", "nunique"))
    out = []
    for method, g in df.groupby("method"):
        g = g.sort_values("fraction")
        row = {"method": method, "curve": g["how"].iloc[0], "seeds": int(g["seeds"].min())}
        for _, p in g.iterrows():
            row[f"{p['fraction']:g}"] = p["value"]
        if target is not None:
            row[f"FLOPs to reach {target:g}"] = flops_to_reach(g["flops"].tolist(), g["value"].tolist(), target)
        out.append(row)
    return pd.DataFrame(out)


def flops_to_reach(flops: list[float], values: list[float], target: float) -> str:
    """The first crossing of ``target`` (values falling), linear in log-FLOPs between points."""
    for i, (f, v) in enumerate(zip(flops, values)):
        if v <= target:
            if i == 0:
                return f"<= {f:.2g}"
            f0, v0 = flops[i - 1], values[i - 1]
            w = (v0 - target) / (v0 - v)
            return f"{math.exp(math.log(f0) + w * (math.log(f) - math.log(f0))):.2g}"
    return "not reached"


def likelihood_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in records:
        for m in rec["metrics"]:
            if m["sampler"] is None and m["name"] in ("test_nll", "test_bpd", "test_bpc") and m.get("seconds") is not None:
                rows.append({"method": method_label(rec), "metric": m["name"], "label": rec.get("likelihood") or m.get("label"),
                             "value": m["value"], "seconds": m["seconds"]})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).groupby(["method", "metric", "label"], as_index=False).agg(
        value=("value", "mean"), seconds=("seconds", "mean")).sort_values("seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", type=Path)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--target", type=float, help="sample-quality target for the NFE table (default: none)")
    ap.add_argument("--curve-target", type=float, help="target for the training-FLOPs table (default: --target)")
    ap.add_argument("--markdown", action="store_true", help="print GitHub markdown tables")
    args = ap.parse_args()
    records = load(args.records, args.dataset)
    metric = PRIMARY[records[0]["modality"]]
    fmt = "github" if args.markdown else "simple"
    per_nfe = sampling_table(records, metric)
    print(f"## {args.dataset}: {metric} (test split, mean over seeds) per sampler and NFE\n")
    shown = per_nfe.assign(ms_per_sample=1000 / per_nfe["samples_per_s"]).drop(columns="samples_per_s")
    print(tabulate(shown, headers="keys", tablefmt=fmt, showindex=False, floatfmt=".3g"))
    if args.target is not None:
        print(f"\n## {args.dataset}: the counted NFE each sampler needs to reach {metric} <= {args.target:g}\n")
        print(tabulate(reach_table(per_nfe, args.target), headers="keys", tablefmt=fmt, showindex=False, floatfmt=".3g"))
    curve_target = args.curve_target if args.curve_target is not None else args.target
    curves = curve_table(records, "test_bpc" if metric == "gen_ppl" else metric, curve_target)
    if len(curves):
        print(f"\n## {args.dataset}: the curve metric at each fraction of the training budget\n")
        print(tabulate(curves, headers="keys", tablefmt=fmt, showindex=False, floatfmt=".3g"))
    lik = likelihood_table(records)
    if len(lik):
        print(f"\n## {args.dataset}: test likelihood, seconds per run (mean over seeds)\n")
        print(tabulate(lik, headers="keys", tablefmt=fmt, showindex=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
