"""`gmbench eval`: score samples made elsewhere against a dataset."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("eval")
@click.option("--dataset", required=True, help="Dataset the samples imitate (name or name:path).")
@click.option("--samples", "samples_path", required=True, type=click.Path(exists=True),
              help=".npy/.npz array, a folder of images, or a text file (one sample per line).")
@click.option("--name", "label", default=None, help="Label on the leaderboard [default: the file's name].")
@click.option("--budget", default="small", show_default=True, help="Budget whose sample count and protocol to match.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the metrics' own randomness.")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Directory for the record.")
@click.option("--device", default="cpu", show_default=True, help="Where metrics compute.")
def eval_(dataset, samples_path, label, budget, seed, out_dir, device) -> None:
    """Score external samples with the metrics of DATASET; the record is labelled source=external."""
    from gmbench.external import score_external
    from gmbench.loading import LoadError
    from gmbench.plugins import Registries

    label = label or Path(samples_path).stem
    try:
        rec = score_external(Registries(), dataset, samples_path, label, budget, out_dir, seed=seed, device=device)
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    if rec["status"] != "ok":
        raise click.ClickException(f"no metric could score the samples: {rec['error']}")
    click.echo(f"{label} on {dataset} ({rec['samples']['n_scored']} samples, budget {budget}) -> {Path(out_dir).resolve()}")
    for e in rec["metrics"]:
        value = f"{e['value']:.6g}" if e.get("value") is not None else e.get("error") or e.get("skipped")
        click.echo(f"  {e['name']}: {value}")


COMMANDS = (eval_,)
