"""`gmbench floor`: noise-floor records (real data scored like a method's samples) for the boards."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--datasets", required=True, help="Comma-separated datasets (name or name:path).")
@click.option("--budget", default="small", show_default=True, help="Budget whose sample count and protocol to match.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, or a count like '3x' for 0,1,2.")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the records (the one the methods' records are in).")
@click.option("--device", default="cpu", show_default=True, help="Where metrics compute.")
@click.option("--fid-reference", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Split FID compares against: use the methods' setting, or the fingerprints differ.")
def floor(datasets, budget, seeds, out_dir, device, fid_reference) -> None:
    """Score real data like a method's samples: fresh draws of the true distribution (toy 2-D, synthlang)
    or a train-split subset (other data). Boards show these records as unranked noise-floor rows."""
    from gmbench.cli.run import _parse_seeds
    from gmbench.floor import floor_record, floor_spec
    from gmbench.plugins import Registries
    from gmbench.records import write_record

    from gmbench.cli import checks

    reg = Registries()
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise click.BadParameter("give at least one dataset", param_hint="--datasets")
    reg.budgets.get(budget)  # unknown names fail here, before any record is written
    for name in names:
        reg.datasets.get(name.partition(":")[0])
    seed_list = _parse_seeds(seeds)
    checks.check_device(device)
    checks.check_dataset_paths(names)
    checks.check_writable_dir(out_dir, "--out")
    # the default (train) adds no option, as for `gmbench run` and `gmbench eval`, so fingerprints match
    options = {"fid_reference_split": fid_reference} if fid_reference != "train" else {}
    for name in names:
        for seed in seed_list:
            rec = floor_record(reg, name, budget, seed, device=device, eval_options=options)
            path = write_record(out_dir, floor_spec(name, rec["budget"], seed, device, options), rec)
            value = _primary(reg, rec)
            click.echo(f"{rec['reference']['label']} on {name} seed {seed}: {rec['status']}{value} -> {Path(path).resolve()}")


def _primary(reg, rec: dict) -> str:
    from gmbench.ranking import entry_at, primary_metric

    metric = primary_metric(reg, rec["dataset"])
    e = entry_at(rec, metric, None, None) if metric else None
    return f", {metric} {e['value']:.4g}" if e else ""
