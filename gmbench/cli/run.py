"""`gmbench run`: train, sample and score a matrix of runs."""

from __future__ import annotations

import os
from pathlib import Path

import click
from tabulate import tabulate


@click.command()
@click.option("--plugins", default="all", show_default=True, help="'all' or comma-separated method names.")
@click.option("--datasets", default=None, help="Comma-separated datasets (name or name:path). Default: every embedded dataset each method supports.")
@click.option("--budget", default="small", show_default=True, help="Budget preset (see `gmbench budgets list`).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, or a count like '3x' for 0,1,2.")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Directory for run records.")
@click.option("--resume", is_flag=True, help="Skip runs that already have an ok record in --out.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--online", is_flag=True, help="Allow hub datasets to be downloaded.")
def run(plugins, datasets, budget, seeds, out_dir, resume, device, online) -> None:
    """Run every selected method on every dataset it supports, then rank them."""
    from gmbench.plugins import Registries
    from gmbench.runner import expand, run_all

    if online:
        os.environ.pop("HF_DATASETS_OFFLINE", None)
    reg = Registries()
    matrix = expand(reg, plugins=plugins, datasets=datasets, budget=budget, seeds=_parse_seeds(seeds), device=device)
    if not matrix.specs:
        raise click.ClickException("nothing to run: no selected method supports the selected datasets")
    click.echo(f"gmbench: {len(matrix.specs)} runs at budget {budget!r} -> {Path(out_dir).resolve()}")

    def progress(spec, rec, i, total):
        head = f"[{i}/{total}] {spec.method} on {spec.dataset} seed {spec.seed}"
        if rec is None:
            click.echo(f"{head}: already done (resume)")
        elif rec["status"] == "ok":
            click.echo(f"{head}: ok in {rec['train']['seconds']:.1f}s train, {rec['train']['steps']} steps")
        else:
            click.echo(f"{head}: FAILED: {rec['error']}", err=True)

    records = run_all(matrix, reg, out_dir, resume=resume, on_record=progress)
    click.echo("")
    click.echo(summary_table(reg, out_dir, [s.spec_hash for s in matrix.specs]))
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        click.echo(f"{len(failed)} run(s) failed; see their records in {out_dir}", err=True)


def _parse_seeds(text: str) -> list[int]:
    text = text.strip()
    try:
        if text.endswith("x"):
            return list(range(int(text[:-1])))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated integers (0,1,2) or a count like 3x", param_hint="--seeds") from None


def summary_table(reg, out_dir, spec_hashes) -> str:
    """Per dataset, methods ranked by the dataset's primary metric (best sampler/NFE)."""
    from gmbench.ranking import best_entry, direction_of, primary_metric
    from gmbench.records import load_records

    wanted = set(spec_hashes)
    records, _ = load_records([out_dir])
    records = [r for r in records if r.get("spec_hash") in wanted]
    blocks = []
    for dataset in sorted({r["dataset"] for r in records}):
        metric = primary_metric(reg, dataset)
        direction = direction_of(reg, metric)
        rows = []
        for r in (r for r in records if r["dataset"] == dataset):
            e = best_entry(r, metric, direction) if r["status"] == "ok" else None
            rows.append([r["method"], r["seed"], e["value"] if e else None, f"{e['sampler']}@{e['nfe']}" if e and e["sampler"] else "",
                         r["status"] if r["status"] != "ok" else "ok"])
        sign = 1 if direction == "lower" else -1
        rows.sort(key=lambda row: (row[2] is None, sign * row[2] if row[2] is not None else 0))
        blocks.append(f"{dataset}: ranked by {metric} ({direction} is better)\n" + tabulate(
            rows, headers=["method", "seed", metric, "sampler@nfe", "status"], floatfmt=".4g"))
    return "\n\n".join(blocks)
