"""Checks of command-line input that need no training, run before the first run starts.

A sweep that fails on a typo after minutes of training wastes the minutes and, worse,
can lose the result (an unwritable ``--out`` used to surface only when the first record
was written). Each check here raises :class:`click.ClickException` (or ``BadParameter``)
with one line naming the culprit.
"""

from __future__ import annotations

import inspect
import os
import re
import types as types_module
import typing
from dataclasses import dataclass
from pathlib import Path

import click

#: arguments of a method's ``__init__`` that the host passes, so ``--set`` cannot
#: (``model_size`` comes from ``--budget``; a second value would be a TypeError mid-run)
HOST_ARGUMENTS = ("self", "data", "model_size")

#: exit status of `gmbench run` / `gmbench eval` when a run failed or is incomplete
RUN_FAILED_EXIT = 3
#: Ctrl-C: the shell's convention for SIGINT (128 + 2)
INTERRUPTED_EXIT = 130


# -- hyper-parameters ---------------------------------------------------------------------


@dataclass(frozen=True)
class HParam:
    """One ``--set``-able argument of a method's ``__init__``."""

    name: str
    annotation: str  # as written in the source, e.g. "int | None"; "" when unannotated
    default: object
    doc: str = ""
    types: tuple | None = None  # accepted Python types; None: not checkable (accept anything)
    choices: tuple | None = None  # typing.Literal values, when annotated so


def hparams_of(cls) -> tuple[list[HParam], bool]:
    """(the method class's settable hyper-parameters, whether ``__init__`` takes ``**kwargs``)."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation naming something not importable here: fall back to defaults' types
        hints = {}
    docs = docstring_args(cls.__doc__ or "")
    out, open_ended = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            open_ended = True
            continue
        if p.name in HOST_ARGUMENTS or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        default = None if p.default is p.empty else p.default
        ann = p.annotation if p.annotation is not p.empty else None
        written = ann if isinstance(ann, str) else (_type_name(ann) if ann is not None else "")
        types, choices = _accepted(hints.get(p.name), default)
        out.append(HParam(p.name, written, default, docs.get(p.name, ""), types, choices))
    return out, open_ended


def _type_name(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _accepted(hint, default) -> tuple[tuple | None, tuple | None]:
    """(types, literal choices) a value may have, from the annotation, else the default's type."""
    if hint is None:
        if default is None:
            return None, None
        return (type(default),), None
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return None, typing.get_args(hint)
    if origin in (typing.Union, getattr(types_module, "UnionType", None)):
        types: list = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                types.append(type(None))
            elif isinstance(arg, type) and arg in (int, float, str, bool):
                types.append(arg)
            else:
                return None, None  # a union with something richer: not checked here
        return tuple(types), None
    if hint in (int, float, str, bool):
        return (hint,), None
    return None, None


def value_fits(value, param: HParam) -> bool:
    if param.choices is not None:
        return value in param.choices
    if param.types is None:
        return True
    for t in param.types:
        if t is type(None) and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        # JSON's 1 is an int: a float parameter takes it; True is not a number here
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is str and isinstance(value, str):
            return True
    return False


def expected(param: HParam) -> str:
    if param.choices is not None:
        return "one of " + ", ".join(repr(c) for c in param.choices)
    names = {int: "an int", float: "a float", str: "a string", bool: "true or false", type(None): "null"}
    return " or ".join(names.get(t, _type_name(t)) for t in param.types or ())


def check_settings(reg, settings: dict[str, dict]) -> None:
    """Every ``--set METHOD.KEY=VALUE``: KEY is an argument of METHOD, VALUE of its type."""
    from gmbench.registry import did_you_mean

    for method, values in settings.items():
        params, open_ended = hparams_of(reg.methods.get(method))
        by_name = {p.name: p for p in params}
        for key, value in values.items():
            if key in HOST_ARGUMENTS:
                raise click.BadParameter(f"{method}.{key} is set by the host (model_size comes from --budget)",
                                         param_hint="--set")
            if key not in by_name:
                if open_ended:
                    continue
                known = ", ".join(sorted(by_name)) or "(none)"
                raise click.BadParameter(f"unknown hyper-parameter {key!r} for {method}.{did_you_mean(key, by_name)} "
                                         f"Known: {known} (`gmbench plugins show {method}`)", param_hint="--set")
            if not value_fits(value, by_name[key]):
                raise click.BadParameter(f"{method}.{key}={_shown(value)}: expected {expected(by_name[key])}",
                                         param_hint="--set")


def check_hub_datasets_cached(reg, specs) -> None:
    """Offline, a HuggingFace hub dataset that is not in the local cache stops the command with
    one line, instead of failing every run of it (opening a cached one is a memory map: cheap)."""
    from gmbench.data import make_dataset
    from gmbench.data.hub import _load_hf, hub_offline
    from gmbench.errors import DatasetUnavailableError

    if not hub_offline():
        return
    for name in sorted({s.dataset for s in specs}):
        try:
            dataset = make_dataset(reg.datasets, name)
        except Exception:  # noqa: BLE001 - a dataset that cannot even be made: its runs say why
            continue
        hf_path = getattr(dataset, "hf_path", "")
        if getattr(dataset, "data_files", None) is not None or hf_path in ("", "imagefolder", "text"):
            continue  # local files, a local folder builder, or not a hub dataset
        try:  # the hub copy's train split, as the image and the text loaders open it
            _load_hf(name, hf_path, "train", cache_dir=getattr(dataset, "cache_dir", None))
        except DatasetUnavailableError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception:  # noqa: BLE001 - any other problem is the run's to record
            continue


def check_construction(reg, specs) -> None:
    """Each method given ``--set`` values is built once per dataset with them (on the CPU, no
    training), so a value its constructor rejects (``vae.iw_samples=-5``) or a learning rate
    that is not positive stops the command with one line instead of leaving failed records."""
    import math

    from gmbench.data import make_dataset
    from gmbench.evaluate import one_line

    seen = set()
    for spec in specs:
        key = (spec.method, spec.dataset, spec.budget, spec.hparams)
        if not spec.hparams or key in seen:
            continue
        seen.add(key)
        shown = " ".join(f"{spec.method}.{k}={_shown(v)}" for k, v in spec.hparams)
        try:
            data = make_dataset(reg.datasets, spec.dataset).spec()
        except Exception:  # noqa: BLE001 - the dataset's own problem: its runs report it
            continue
        try:
            method = reg.methods.get(spec.method)(data, model_size=reg.budgets.get(spec.budget).model_size,
                                                  **dict(spec.hparams))
            for stage in method.stages():
                for opt in stage.optimizers:
                    try:
                        lr = float(opt.lr)
                    except (TypeError, ValueError):
                        lr = math.nan
                    if not (math.isfinite(lr) and lr > 0):
                        raise ValueError(f"optimizer {opt.name!r} of stage {stage.name!r} gets learning rate {opt.lr!r}; "
                                         "it must be a positive number")
        except Exception as exc:  # noqa: BLE001 - whatever the plugin raises, one line
            raise click.BadParameter(f"{shown}: {spec.method} on {spec.dataset} cannot be built with it: {one_line(exc)}",
                                     param_hint="--set") from None


def check_curves(reg, specs) -> list[str]:
    """Curve points the runs cannot give: a method is sampled only once its last stage has
    started, so a fraction of the budget spent before then is recorded as skipped
    (``gmbench.curve.fractions_before_last_stage``; each method is built once per dataset,
    budget and ``--set`` values, on the CPU, to read its stages).

    A budget written outside gmbench (a plugin's, or one registered in-process) states the
    fractions its user asked for: when a method can give *none* of them, this raises one line
    saying what to do. With gmbench's own budgets the fractions are the suite's defaults, for
    every method alike: the runs go ahead, and the returned notes, one line per method,
    dataset, budget and settings (its seeds named), say which points will be skipped and why.
    Runs that do not train (``--load``) take no curve.
    """
    import torch

    from gmbench.curve import fractions_before_last_stage
    from gmbench.curve_board import fraction_text
    from gmbench.data import make_dataset
    from gmbench.leaderboard import method_label

    groups: dict[tuple, list[int]] = {}
    for spec in specs:
        if not spec.load:
            groups.setdefault((spec.method, spec.dataset, spec.budget, spec.hparams), []).append(spec.seed)
    notes = []
    for (method, dataset, budget_name, hparams), seeds in groups.items():
        budget = reg.budgets.get(budget_name)
        wanted = [f for f in budget.curve_fractions if 0 < f < 1]
        if not wanted:
            continue
        try:
            data = make_dataset(reg.datasets, dataset).spec()
            with torch.random.fork_rng(devices=[]):  # the command's own RNG state stays as it was
                built = reg.methods.get(method)(data, model_size=budget.model_size, **dict(hparams))
            early, start, last = fractions_before_last_stage(built, wanted)
        except Exception:  # noqa: BLE001 - the method's or dataset's own problem: its runs report it
            continue
        if not early:
            continue
        label = method_label({"method": method, "hparams": dict(hparams)})  # as the summary table names it
        points = ", ".join(fraction_text(f) for f in early)
        why = f"it is sampled only once its last stage, {last!r}, starts at {fraction_text(start)} of the training FLOPs"
        if reg.budgets.origin(budget_name).split(" ")[0] != "gmbench" and len(early) == len(wanted):
            raise click.ClickException(
                f"budget {budget_name!r} asks for curve points at {points} of the training FLOPs, but {label} on "
                f"{dataset} can give none of them: {why}; give the budget curve_fractions of at least "
                f"{fraction_text(start)}, or leave {method} out of --plugins")
        runs = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        notes.append(f"gmbench: note: {label} on {dataset} ({budget_name}, {runs}): curve point(s) at {points} of "
                     f"the training FLOPs will be recorded as skipped: {why}")
    return notes


def _shown(value) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def docstring_args(doc: str) -> dict[str, str]:
    """``{name: text}`` from a Google-style ``Args:`` section (continuation lines joined)."""
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:", "Parameters:"))
    except StopIteration:
        return out
    indent, current = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            current = None if indent is None else current
            continue
        this = len(line) - len(line.lstrip())
        if indent is None:
            indent = this
        if this < indent:
            break
        m = re.match(r"\s*(\*{0,2}\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", line)
        if this == indent and m:
            current = m.group(1).lstrip("*")
            out[current] = m.group(2).strip()
        elif current is not None and this > indent:
            out[current] = f"{out[current]} {line.strip()}".strip()
        else:
            break
    return out


# -- the run matrix -----------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"3x"`` -> seeds (integers >= 0, repeats dropped); anything else is one line."""
    raw = text.strip()
    hint = "give comma-separated integers >= 0 (0,1,2) or a count like 3x"
    try:
        if raw.endswith("x"):
            n = int(raw[:-1])
            if n < 1:
                raise click.BadParameter(f"{raw!r}: a count of seeds must be at least 1x", param_hint="--seeds")
            return list(range(n))
        seeds = [int(s) for s in raw.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{raw!r}: {hint}", param_hint="--seeds") from None
    if not seeds:
        raise click.BadParameter(f"{raw!r}: no seed given; {hint}", param_hint="--seeds")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise click.BadParameter(f"{raw!r}: seed {negative[0]} is negative; {hint}", param_hint="--seeds")
    return list(dict.fromkeys(seeds))


def check_device(device: str) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    import torch

    text = device.strip()
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if text == "cpu":
        return
    if m:
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{text!r}: no CUDA GPU is visible to torch here (torch.cuda.is_available() is False); "
                                     "use --device cpu", param_hint="--device")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise click.BadParameter(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                     f"numbered from 0", param_hint="--device")
        return
    if text == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise click.BadParameter("'mps': no Apple GPU is available to torch here; use --device cpu", param_hint="--device")
        return
    raise click.BadParameter(f"unknown device {text!r}: use cpu, cuda, cuda:N or mps", param_hint="--device")


#: datasets whose argument is a path on this machine, and what it must be
PATH_DATASETS = {"imagefolder": "folder", "textfile": "file"}


def check_dataset_paths(tokens) -> None:
    """``imagefolder:/path`` and ``textfile:/path`` name something that exists."""
    for token in tokens:
        name, _, arg = token.strip().partition(":")
        kind = PATH_DATASETS.get(name)
        if kind is None:
            continue
        if not arg:
            raise click.BadParameter(f"{name} needs a {kind}: use {name}:/path", param_hint="--datasets")
        path = Path(arg).expanduser()
        if not path.exists():
            raise click.BadParameter(f"{token}: no such {kind} {arg!r}", param_hint="--datasets")
        if kind == "folder" and not path.is_dir():
            raise click.BadParameter(f"{token}: {arg!r} is a file; imagefolder needs a folder of images", param_hint="--datasets")
        if kind == "file" and not path.is_file():
            raise click.BadParameter(f"{token}: {arg!r} is a folder; textfile needs a text file", param_hint="--datasets")


def check_explicit_pairs(reg, plugins: str, datasets: str | None) -> None:
    """A method named in ``--plugins`` that supports none of the datasets named in ``--datasets``
    is a mistake, not something to skip quietly ('all' on either side is a sweep: skipping is right)."""
    if plugins in (None, "all") or datasets in (None, "all"):
        return
    tokens = [t.strip() for t in datasets.split(",") if t.strip()]
    modalities = {t: reg.datasets.get(t.partition(":")[0]).modality for t in tokens}
    for m in reg.methods.select(plugins):
        cls = reg.methods.get(m)
        if not any(mod in cls.modalities for mod in modalities.values()):
            wanted = sorted(set(modalities.values()))
            raise click.ClickException(f"{m} does not support {' or '.join(wanted)} data (it supports "
                                       f"{', '.join(cls.modalities)}); drop it from --plugins or add a dataset it supports")


# -- output paths -------------------------------------------------------------------------


def check_writable_dir(path, option: str = "--out") -> None:
    """``path`` is, or can be created as, a directory this process can write into.

    Nothing is created: a scratch file is made and removed in ``path``, or in its
    nearest existing ancestor when ``path`` does not exist yet (os.access says yes to
    root on a read-only mount and cannot see ACLs). So a sweep never trains for minutes
    and then loses its records on the first write.
    """
    import tempfile

    p = Path(path).expanduser().absolute()
    existing = next(q for q in [p, *p.parents] if q.exists() or q == q.parent)
    if not existing.is_dir():
        culprit = "it" if existing == p else str(existing)
        raise click.BadParameter(f"{path}: {culprit} is a file, not a directory", param_hint=option)
    try:
        fd, scratch = tempfile.mkstemp(prefix=".tmp-gmbench-write-check-", dir=existing)
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        where = "" if existing == p else f" (cannot create it in {existing})"
        raise click.BadParameter(f"{path}: not writable{where}: {exc.strerror or exc}", param_hint=option) from None


def check_writable_file(path, option: str = "--out") -> None:
    """The folder of the file ``path`` can hold it, and ``path`` is not a directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise click.BadParameter(f"{path}: is a directory; give a file name", param_hint=option)
    check_writable_dir(p.parent if str(p.parent) else ".", option)
