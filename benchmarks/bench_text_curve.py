"""Learning curve of the text methods: test bits/char against training tokens.

Trains each method once on the synthetic language at ``--scale`` times the
``small`` budget's text FLOPs and reads its curve (``gmbench.curve``: the model
evaluated at fractions of the allowance on a subset of the test split, the same
protocol at every point), so one run gives bits/char at every fraction of that
compute. Tokens are ``steps x batch x sequence length`` at each point. The
entropy rate of the source and the unigram baseline are printed beside.

    python benchmarks/bench_text_curve.py --methods ar,mdlm --scale 4 --out /tmp/textcurve

Numbers and the command go in docs/text_budget.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from gmbench.budget import SMALL
from gmbench.hookspecs import hookimpl
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.records import RunSpec
from gmbench.runner import run_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ar,mdlm")
    ap.add_argument("--dataset", default="synthlang")
    ap.add_argument("--scale", type=float, default=4.0, help="times the small budget's text FLOPs")
    ap.add_argument("--fractions", default="0.0625,0.125,0.25,0.5")
    ap.add_argument("--examples", type=int, default=256, help="test windows per curve point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="METHOD.KEY=VALUE (JSON value)")
    ap.add_argument("--out", default="/tmp/gmbench-text-curve")
    args = ap.parse_args()

    flops = SMALL.train_flops["text"] * args.scale
    budget = dataclasses.replace(
        SMALL, name=f"small-text-x{args.scale:g}", train_flops={**SMALL.train_flops, "text": flops},
        curve_fractions=tuple(float(f) for f in args.fractions.split(",")),
        curve_samples={**SMALL.curve_samples, "text": args.examples})

    class Plugin:
        @hookimpl
        def gmbench_register_budgets(self, register):
            register(budget)

    reg = Registries(make_plugin_manager(extra_plugins=(Plugin(),)))
    hparams: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        try:
            hparams.setdefault(method, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            hparams.setdefault(method, {})[name] = value
    dataset = reg.datasets.get(args.dataset)()
    seq_len = dataset.split("train").x.shape[1]
    batch = budget.batch_size["text"]
    print(f"{args.dataset}: entropy rate {dataset.entropy_rate_bits():.3f} bits/char; "
          f"budget {flops:.3g} FLOPs (x{args.scale:g} small), batch {batch} x {seq_len} chars")
    print("method  fraction  FLOPs  tokens  test_bpc(subset)  eval_s")
    out = Path(args.out)
    for method in args.methods.split(","):
        spec = RunSpec(method, args.dataset, budget.name, args.seed, hparams=tuple(sorted(hparams.get(method, {}).items())))
        rec = run_one(spec, reg, out)
        if rec["status"] != "ok":
            print(f"{method}: {rec['status']}: {rec.get('error')}")
        for p in rec.get("curve", []):
            tokens = p["step"] * batch * seq_len
            value = p.get("value")
            shown = f"{value:.3f}" if value is not None else (p.get("error") or p.get("skipped"))
            print(f"{method}  {p['fraction']:.4g}  {p['flops']:.3g}  {tokens:,}  {shown}  {p.get('seconds', 0):.1f}")
        full = next((e for e in rec.get("metrics", []) if e.get("name") == "test_bpc"), None)
        impossible = next((e for e in rec.get("metrics", []) if e.get("name") == "impossible_share"
                           and e.get("split") == "test"), None)
        print(f"{method}: full test_bpc {full and full.get('value')}, impossible_share {impossible and impossible.get('value')}, "
              f"train {rec.get('cost', {}).get('train_seconds')} s")


if __name__ == "__main__":
    main()
