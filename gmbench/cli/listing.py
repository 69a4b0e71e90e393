"""`gmbench plugins|datasets|budgets list`."""

from __future__ import annotations

import click

from gmbench.cli.common import emit


def _registries():
    from gmbench.plugins import Registries

    return Registries()


@click.group()
def plugins() -> None:
    """Installed method plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_list(as_json: bool) -> None:
    """Every method with its family, paper, distribution and modalities."""
    reg = _registries()
    rows = []
    for name in reg.methods.names():
        cls = reg.methods.get(name)
        d = cls.describe()
        dist, _, version = reg.methods.origin(name).partition(" ")
        rows.append(
            {
                "name": name,
                "family": d["family"],
                "paper": f"arXiv:{d['paper']}",
                "distribution": dist,
                "version": version,
                "modalities": d["modalities"],
                "likelihood": d["likelihood"],
                "samplers": [s["name"] for s in d["samplers"]] if not as_json else d["samplers"],
            }
        )
    emit(rows, as_json)


@click.group()
def datasets() -> None:
    """Registered datasets."""


@datasets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def datasets_list(as_json: bool) -> None:
    """Every dataset, its modality, whether it is embedded (offline)."""
    reg = _registries()
    rows = []
    for name in reg.datasets.names():
        cls = reg.datasets.get(name)
        rows.append(
            {
                "name": name,
                "modality": cls.modality,
                "embedded": bool(cls.embedded),
                "primary_metric": cls.primary_metric,
                "description": cls.description,
            }
        )
    emit(rows, as_json)


@click.group()
def budgets() -> None:
    """Compute budgets."""


@budgets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def budgets_list(as_json: bool) -> None:
    """Every budget preset with its FLOPs, clock cap, model size and NFE grid."""
    reg = _registries()
    rows = []
    for name in reg.budgets.names():
        b = reg.budgets.get(name)
        if as_json:
            rows.append(b.to_dict())
        else:
            flops = ", ".join(f"{k} {v:.1e}" for k, v in b.train_flops.items())
            rows.append(
                {"name": name, "train_flops": flops, "wall_clock_s": b.wall_clock_s, "model_size": b.model_size,
                 "nfe_grid": list(b.nfe_grid), "description": b.description}
            )
    emit(rows, as_json)


COMMANDS = (plugins, datasets, budgets)
