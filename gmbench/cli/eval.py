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
@click.option("--value-range", "value_range", default=None, metavar="LOW,HIGH", callback=lambda ctx, param, v: _value_range(v),
              help="Range the image samples were made in, e.g. 0,1 or 0,255; they are rescaled to the dataset's "
                   "[default: uint8 = 0..255, floats = the dataset's range].")
@click.option("--fid-reference", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Split FID compares against (part of the fingerprint; docs/metrics.md).")
def eval_(dataset, samples_path, label, budget, seed, out_dir, device, value_range, fid_reference) -> None:
    """Score external samples with the metrics of DATASET; the record is labelled source=external.

    \b
    Exit status: 0 scored; 1 bad input, nothing scored; 3 no metric could score
    the samples (a failed record is written, saying why).
    """
    from gmbench.cli import checks
    from gmbench.external import score_external
    from gmbench.loading import LoadError
    from gmbench.plugins import Registries

    label = label or Path(samples_path).stem
    reg = Registries()
    modality = getattr(reg.datasets.get(dataset.partition(":")[0]), "modality", "image")
    if fid_reference != "train" and modality != "image":
        raise click.BadParameter(f"FID scores images; {dataset} holds {modality} data", param_hint="--fid-reference")
    checks.check_device(device)
    checks.check_dataset_paths([dataset])
    checks.check_writable_dir(out_dir, "--out")
    try:
        rec = score_external(reg, dataset, samples_path, label, budget, out_dir, seed=seed, device=device,
                             value_range=value_range, eval_options=fid_reference_options(fid_reference))
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in rec["samples"]["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if rec["status"] != "ok":
        click.echo(f"Error: no metric could score the samples: {rec['error']}", err=True)
        click.get_current_context().exit(checks.RUN_FAILED_EXIT)
    click.echo(f"{label} on {dataset} ({rec['samples']['n_scored']} samples, budget {budget}) -> {Path(out_dir).resolve()}")
    for e in rec["metrics"]:
        value = f"{e['value']:.6g}" if e.get("value") is not None else e.get("error") or e.get("skipped")
        click.echo(f"  {e['name']}: {value}")


def _value_range(text):
    from gmbench.loading import parse_value_range

    if text is None:
        return None
    try:
        return parse_value_range(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--value-range") from None


def fid_reference_options(split: str | None) -> dict:
    """``--fid-reference`` as evaluation options; the default (train) adds none, so runs
    without the option keep their spec hashes and fingerprints."""
    return {"fid_reference_split": split} if split and split != "train" else {}


COMMANDS = (eval_,)
