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
    emit(_listing("plugins", as_json), as_json)


def _plugin_rows(reg, as_json: bool) -> list[dict]:
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
    return rows


@plugins.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_show(name: str, as_json: bool) -> None:
    """One method's hyper-parameters: what `gmbench run --set NAME.KEY=VALUE` accepts.

    Types, defaults and docs come from the method class's ``__init__`` signature and
    the ``Args:`` section of its docstring.
    """
    from gmbench.cli.checks import hparams_of

    reg = _registries()
    cls = reg.methods.get(name)
    params, open_ended = hparams_of(cls)
    rows = [{"name": p.name, "type": p.annotation or (type(p.default).__name__ if p.default is not None else ""),
             "default": p.default, "doc": _plain(p.doc)} for p in params]
    if as_json:
        emit(rows, True)
        return
    d = cls.describe()
    click.echo(f"{name}: {d.get('title') or ''} ({d['family']}, arXiv:{d['paper']}); modalities: {', '.join(d['modalities'])}")
    click.echo(f"hyper-parameters (gmbench run --set {name}.KEY=VALUE; values are JSON, else strings):")
    if not rows:
        click.echo("(none)")
    else:
        emit([{**r, "default": "null" if r["default"] is None else repr(r["default"])} for r in rows], False,
             ["name", "type", "default", "doc"])
    if open_ended:
        click.echo(f"{name} also takes keyword arguments not listed here (**kwargs): other keys are passed through unchecked")


def _plain(doc: str) -> str:
    """Docstring markup to terminal text: ``x`` -> x, :class:`~a.b.C` -> C."""
    import re

    doc = re.sub(r":\w+:`~?([^`]*?)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return doc.replace("``", "")


@click.group()
def datasets() -> None:
    """Registered datasets."""


@datasets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def datasets_list(as_json: bool) -> None:
    """Every dataset, its modality, whether it is embedded (offline) and in the default suite."""
    emit(_listing("datasets", as_json), as_json)


def _dataset_rows(reg, as_json: bool) -> list[dict]:
    rows = []
    for name in reg.datasets.names():
        cls = reg.datasets.get(name)
        rows.append(
            {
                "name": name,
                "modality": cls.modality,
                "embedded": bool(cls.embedded),
                "default": bool(cls.embedded and cls.suite_default),
                "primary_metric": cls.primary_metric,
                "description": cls.description,
            }
        )
    return rows


@click.group()
def budgets() -> None:
    """Compute budgets."""


@budgets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def budgets_list(as_json: bool) -> None:
    """Every budget preset with its FLOPs, clock cap, model size and NFE grid, smallest first."""
    emit(_listing("budgets", as_json), as_json)


def _budget_rows(reg, as_json: bool) -> list[dict]:
    rows = []
    for b in budgets_in_size_order([reg.budgets.get(name) for name in reg.budgets.names()]):
        if as_json:
            rows.append({**b.to_dict(), "train_cap_s": {m: b.base_train_cap_for(m, "cpu") for m in b.train_flops}})
        else:
            rows.append(
                {"name": b.name, "train_flops": _per_modality(b.train_flops, "{:.1e}"),
                 "batch_size": _per_modality(b.batch_size), "eval_samples": _per_modality(b.eval_samples),
                 "train_cap_s": _clock_cap(b), "model_size": b.model_size, "nfe_grid": list(b.nfe_grid),
                 "description": b.description}
            )
    return rows


#: listing name -> the function that builds its rows from the registries
_ROWS = {"plugins": _plugin_rows, "datasets": _dataset_rows, "budgets": _budget_rows}


def _listing(kind: str, as_json: bool) -> list[dict]:
    """The rows of one listing, from the stored catalog (no torch import) or built live."""
    from gmbench.catalog import load_catalog

    def build() -> dict:
        reg = _registries()
        return {k: {"json": rows(reg, True), "table": rows(reg, False)} for k, rows in _ROWS.items()}

    return load_catalog(build)[kind]["json" if as_json else "table"]


#: the built-in budgets, smallest first; any other budget follows them
BUILTIN_BUDGET_ORDER = ("smoke", "small", "standard", "large")


def budgets_in_size_order(budgets: list) -> list:
    """The built-in budgets in size order, then the others by total training FLOPs (then name)."""
    def key(b):
        if b.name in BUILTIN_BUDGET_ORDER:
            return (0, BUILTIN_BUDGET_ORDER.index(b.name), 0.0, b.name)
        return (1, 0, float(sum(b.train_flops.values())), b.name)

    return sorted(budgets, key=key)


def _clock_cap(b) -> str:
    """The training cap per modality on a CPU: the budget's stated cap, or the one derived from its
    FLOPs where it states none; both before ``$GMBENCH_CAP_SCALE`` (the listing is cached, the
    variable is not: a run's cap is this times the variable's value)."""
    if b.wall_clock_s is not None:
        return f"{b.wall_clock_s:g}"
    caps = _per_modality({m: b.base_train_cap_for(m, "cpu") for m in b.train_flops}, "{:.0f}")
    return f"{caps} (derived, CPU)"


def _per_modality(values: dict, fmt: str = "{}") -> str:
    return ", ".join(f"{k} {fmt.format(v)}" for k, v in values.items())


COMMANDS = (plugins, datasets, budgets)
