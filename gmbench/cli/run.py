"""`gmbench run`: train, sample and score a matrix of runs."""

from __future__ import annotations

import os
from pathlib import Path

import click
from tabulate import tabulate


@click.command()
@click.option("--plugins", default="all", show_default=True, help="'all' or comma-separated method names.")
@click.option("--datasets", default=None, help="Comma-separated datasets (name or name:path), or 'all' for every embedded one. Default: one per modality (8gaussians, digits, synthlang; `gmbench datasets list` marks them).")
@click.option("--budget", default="small", show_default=True,
              help="Budget preset, or a comma list such as smoke,small to run each (see `gmbench budgets list`).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, or a count like '3x' for 0,1,2.")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Directory for run records.")
@click.option("--resume", is_flag=True,
              help="Continue interrupted and incomplete runs from their last training checkpoint (else they restart).")
@click.option("--force", is_flag=True,
              help="Re-run specs that already have an ok record in --out (the old record is kept in attempts/).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--online", is_flag=True, help="Allow hub datasets to be downloaded.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine (in-process, or --jobs worker processes); ray: one Ray task per run.")
@click.option("--jobs", type=int, default=None, help="Run N runs at a time in isolated worker processes (local executor).")
@click.option("--ray-address", default=None, help="Existing Ray cluster (host:port or 'auto'); default starts a local Ray.")
@click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True, help="CPUs Ray reserves per run (and its torch threads).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch intra-op threads per run [default: the CPUs this process may use (affinity, cgroup quota) "
                   "divided by --jobs, or --cpus-per-run under Ray].")
@click.option("--gpus-per-run", type=click.FloatRange(min=0), default=None, help="GPUs Ray reserves per run [default: 1 with --device cuda, else 0].")
@click.option("--memory-cap-mb", type=click.IntRange(min=1), default=None, help="Per-run memory cap in worker processes (address space beyond start-up).")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=60, show_default=True,
              help="Seconds past a run's training + evaluation caps before its worker is killed as hung.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: autocast training forward passes and sampling (part of the fingerprint).")
@click.option("--deterministic", is_flag=True, help="Deterministic torch kernels (see docs/scaling.md).")
@click.option("--load", "loads", multiple=True, metavar="METHOD=PATH",
              help="Evaluate METHOD from a safetensors checkpoint instead of training it (repeatable).")
@click.option("--set", "settings", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Set a method hyper-parameter, e.g. vae.iw_samples=64 (repeatable; JSON values, else strings).")
@click.option("--save-checkpoints", "checkpoint_dir", default=None, type=click.Path(file_okay=False),
              help="Save each trained run's weights here (safetensors), for --load.")
@click.option("--fid-reference", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Split image FID compares against (part of the fingerprint; docs/metrics.md).")
@click.option("--allow-failures", is_flag=True,
              help="Exit 0 even when some runs failed or are incomplete (sweeps that expect some).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bars and no per-run lines; failures, the table and the summary still print.")
def run(plugins, datasets, budget, seeds, out_dir, resume, force, device, online, executor, jobs, ray_address, cpus_per_run,
        threads, gpus_per_run, memory_cap_mb, grace_s, precision, deterministic, loads, settings, checkpoint_dir,
        fid_reference, allow_failures, quiet) -> None:
    """Run every selected method on every dataset it supports, then rank them.

    Everything that can be checked without training (names, --set keys and types,
    --device, dataset paths, seeds, that --out is writable) is checked before the
    first run starts.

    \b
    Exit status:
      0  every run is ok (or was already done, or runs in another process)
      1  bad input, nothing was run (one-line error; 2 for a malformed option)
      3  some run failed or is incomplete (its record says why);
         --allow-failures exits 0 instead
      130  interrupted (Ctrl-C); --resume continues
    """
    from gmbench.cli import checks
    from gmbench.execution import ExecutionError, RunOptions, make_executor
    from gmbench.plugins import Registries
    from gmbench.runner import run_all

    if online:
        os.environ.pop("HF_DATASETS_OFFLINE", None)
    _check_environment()
    reg = Registries()
    seed_list = _parse_seeds(seeds)
    if datasets:
        checks.check_dataset_paths(datasets.split(","))
    budgets = _parse_budgets(reg, budget)
    matrix = _expand_budgets(reg, budgets, plugins=plugins, datasets=datasets, seeds=seed_list, device=device)
    checks.check_explicit_pairs(reg, plugins, datasets)
    if not matrix.specs:
        raise click.ClickException("nothing to run: no selected method supports the selected datasets")
    matrix.specs = _configure(matrix.specs, precision, _parse_loads(loads, {s.method for s in matrix.specs}))
    parsed_settings = _parse_settings(settings, {s.method for s in matrix.specs})
    checks.check_settings(reg, parsed_settings)
    matrix.specs = _apply_settings(matrix.specs, parsed_settings)
    checks.check_construction(reg, matrix.specs)
    from gmbench.records import finished  # runs already done need no data

    to_run = [s for s in matrix.specs if force or not finished(out_dir, s)]
    checks.check_hub_datasets_cached(reg, to_run)
    curve_notes = checks.check_curves(reg, to_run)
    matrix.specs = _apply_fid_reference(reg, matrix.specs, fid_reference)
    if memory_cap_mb and device.startswith("cuda"):
        raise click.ClickException("--memory-cap-mb: cannot cap host address space with CUDA (the driver reserves tens of GB "
                                   "of it); leave it out: GPU out-of-memory errors become failed records anyway")
    if executor == "ray" and device.startswith("cuda:"):
        raise click.ClickException("--device: under Ray use --device cuda, not cuda:N: Ray assigns each run its GPU")
    if gpus_per_run is None:
        gpus_per_run = 1 if device.startswith("cuda") else 0
    if executor != "ray":  # under Ray the GPUs are the cluster's, not necessarily this machine's
        checks.check_device(device)
    checks.check_writable_dir(out_dir, "--out")
    if checkpoint_dir:
        checks.check_writable_dir(checkpoint_dir, "--save-checkpoints")
    options = RunOptions(checkpoint_dir=checkpoint_dir, memory_cap_mb=memory_cap_mb, grace_s=grace_s, deterministic=deterministic,
                         threads=threads)
    try:
        runner = make_executor(executor, jobs=jobs, options=options, ray_address=ray_address,
                               cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
    except ExecutionError as exc:
        raise click.ClickException(str(exc)) from None
    from gmbench import progress as bars

    at = f"budget {budgets[0]!r}" if len(budgets) == 1 else f"budgets {', '.join(repr(b) for b in budgets)}"
    click.echo(f"gmbench: {len(matrix.specs)} runs at {at} -> {Path(out_dir).resolve()}")
    _say_what_happens_to_existing(matrix.specs, out_dir, resume, force)
    for note in curve_notes:  # the budget's default curve points that some runs cannot give
        click.echo(note)
    eta = RunETA()

    def progress(spec, rec, i, total):
        head = f"[{i}/{total}] {spec.method} on {spec.dataset} seed {spec.seed}{eta.after(i, total, rec is None)}"
        if rec is None:
            if not quiet:
                click.echo(f"{head}: already done (ok record kept; --force re-runs it)")
        elif rec["status"] == "skipped":
            click.echo(f"{head}: skipped: {rec['error']}", err=True)
        elif rec["status"] == "incomplete":
            click.echo(f"{head}: INCOMPLETE ({rec['train']['budget_spent']:.0%} of the budget): "
                       f"{rec['train']['stopped']}; evaluated anyway, `--resume` continues it", err=True)
        elif quiet and rec["status"] == "ok":
            pass
        elif rec["status"] == "ok" and rec.get("train") is None:
            click.echo(f"{head}: ok (loaded {Path(rec['load']['path']).name}){_errored_values(rec)}")
        elif rec["status"] == "ok":
            click.echo(f"{head}: ok in {rec['train']['seconds']:.1f}s train, {rec['train']['steps']} steps"
                       f"{_errored_values(rec)}")
        else:
            click.echo(f"{head}: FAILED: {rec['error']}", err=True)

    try:
        with runner, bars.reporting(bars.TqdmReporter() if bars.wanted(quiet) else None):
            records = run_all(matrix, reg, out_dir, resume=resume, on_record=progress, executor=runner, force=force)
    except ExecutionError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # not click's "Aborted!" and exit 1, which means bad input here
        click.echo(f"\ngmbench: interrupted; the finished runs' records are in {out_dir}, "
                   "and `gmbench run ... --resume` with the same options continues the rest", err=True)
        click.get_current_context().exit(checks.INTERRUPTED_EXIT)
    click.echo("")
    for b in budgets:  # one table per budget: runs of different budgets are never ranked together
        if len(budgets) > 1:
            click.echo(f"budget {b}:")
        click.echo(summary_table(reg, out_dir, [s.spec_hash for s in matrix.specs if s.budget == b]))
    counts = {k: sum(r["status"] == k for r in records) for k in ("ok", "failed", "incomplete", "skipped")}
    if counts["failed"] or counts["incomplete"]:
        click.echo(f"some runs did not finish ok; see their records in {out_dir}", err=True)
    click.echo(f"gmbench: {counts['ok']} ok, {counts['failed']} failed, {counts['incomplete']} incomplete, "
               f"{counts['skipped']} skipped (running elsewhere), {len(matrix.specs) - len(records)} already done")
    if (counts["failed"] or counts["incomplete"]) and not allow_failures:
        # the summary above stays the last line on stdout; scripts read the status
        click.get_current_context().exit(checks.RUN_FAILED_EXIT)


class RunETA:
    """`, ETA 3m10s` for the per-run lines: the mean time of the runs done so far (runs
    already done in --out cost nothing and are not counted) times the runs left."""

    def __init__(self, clock=None) -> None:
        import time

        self.clock = clock or time.monotonic
        self.start = self.clock()
        self.skipped = 0

    def after(self, done: int, total: int, was_skipped: bool) -> str:
        self.skipped += was_skipped
        ran = done - self.skipped
        left = total - done
        if ran <= 0 or left <= 0:
            return ""
        return f", ETA {_duration((self.clock() - self.start) / ran * left)}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _parse_budgets(reg, text: str) -> list[str]:
    """``--budget`` as a list of registered budget names, checked before any run starts: an
    unknown name (with a suggestion), an empty item or a repeated one is a one-line error."""
    names = [t.strip() for t in text.split(",")]
    if len(names) > 1:
        if not all(names):
            raise click.ClickException(f"--budget {text!r}: an empty name in the comma list")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise click.ClickException(f"--budget {text!r}: {', '.join(repeated)} listed more than once")
    for name in names:
        reg.budgets.get(name)  # RegistryError: "unknown budget 'x'; did you mean ...", one line
    return names


def _expand_budgets(reg, budgets: list[str], **kw):
    """The run matrix of each budget, one after another (``--budget smoke,small``)."""
    from gmbench.runner import Matrix, expand

    matrices = [expand(reg, budget=b, **kw) for b in budgets]
    if len(matrices) == 1:
        return matrices[0]
    skipped = list(dict.fromkeys(x for m in matrices for x in m.skipped))
    return Matrix([s for m in matrices for s in m.specs], skipped)


def _say_what_happens_to_existing(specs, out_dir, resume: bool, force: bool) -> None:
    """One line on what this command does with the records and checkpoints already in ``out_dir``."""
    from gmbench.records import record_status

    statuses = [record_status(out_dir, s) for s in specs] if Path(out_dir).is_dir() else []
    ok = sum(st == "ok" for st in statuses)
    unfinished = sum(st in ("failed", "incomplete") for st in statuses)
    if ok:
        click.echo(f"gmbench: {ok} run(s) already have an ok record in {out_dir}: "
                   + ("re-running them (--force; old records go to attempts/)" if force else "kept and skipped (--force re-runs them)"))
    if unfinished:
        click.echo(f"gmbench: {unfinished} failed or incomplete run(s) there: "
                   + ("continuing from their checkpoints where they have one (--resume)" if resume
                      else "restarting them from zero (--resume continues from checkpoints)"))


def _parse_loads(loads: tuple[str, ...], methods: set[str]) -> dict[str, str]:
    """``METHOD=PATH`` options to ``{method: absolute path}``; the files are checked now, not mid-suite."""
    from gmbench.loading import LoadError, check_checkpoint_path

    out = {}
    for item in loads:
        method, sep, path = item.partition("=")
        if not sep or not method or not path:
            raise click.ClickException(f"--load {item!r}: use METHOD=PATH")
        if method not in methods:
            raise click.ClickException(f"--load: {method!r} is not among the runs selected ({', '.join(sorted(methods))})")
        try:
            out[method] = str(check_checkpoint_path(path).resolve())
        except LoadError as exc:
            raise click.ClickException(f"--load: {exc}") from None
    return out


def _configure(specs, precision: str, loads: dict[str, str]):
    from dataclasses import replace

    return [replace(s, precision=precision, load=loads.get(s.method)) for s in specs]


def _parse_settings(settings, methods: set[str]) -> dict[str, dict]:
    """``METHOD.KEY=VALUE`` strings -> {method: {key: value}}; values parsed as JSON where they parse."""
    import json

    out: dict[str, dict] = {}
    for item in settings:
        target, eq, raw = item.partition("=")
        method, dot, key = target.partition(".")
        if not (eq and dot and method and key):
            raise click.BadParameter(f"{item!r}: use METHOD.KEY=VALUE, e.g. vae.iw_samples=64", param_hint="--set")
        if method not in methods:
            raise click.BadParameter(f"{item!r}: method {method!r} is not among the runs ({', '.join(sorted(methods))})",
                                     param_hint="--set")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(method, {})[key] = value
    return out


def _apply_settings(specs, settings: dict[str, dict]):
    from dataclasses import replace

    return [
        replace(s, hparams=tuple(sorted({**dict(s.hparams), **settings[s.method]}.items()))) if s.method in settings else s
        for s in specs
    ]


def _apply_fid_reference(reg, specs, split: str):
    """``--fid-reference`` into the image runs' ``eval_options`` (the metrics' context and
    fingerprint); the default adds nothing, and other modalities are left alone, so their
    spec hashes (and ``--resume``) are unchanged."""
    from dataclasses import replace

    from gmbench.cli.eval import fid_reference_options

    extra = fid_reference_options(split)
    if not extra:
        return specs

    def is_image(token: str) -> bool:
        return getattr(reg.datasets.get(token.partition(":")[0]), "modality", "image") == "image"

    return [replace(s, eval_options=tuple(sorted({**dict(s.eval_options), **extra}.items()))) if is_image(s.dataset) else s
            for s in specs]


def _parse_seeds(text: str) -> list[int]:
    from gmbench.cli.checks import parse_seeds

    return parse_seeds(text)


def summary_table(reg, out_dir, spec_hashes) -> str:
    """Per dataset, runs ranked by the dataset's primary metric: the test value at each method's
    setting chosen on validation over its seeds (gmbench.ranking.select_setting), as on the boards."""
    from gmbench.leaderboard import method_label
    from gmbench.ranking import direction_of, primary_metric, select_setting, selected_values
    from gmbench.records import load_records

    wanted = set(spec_hashes)
    records, _ = load_records([out_dir])
    records = [r for r in records if r.get("spec_hash") in wanted]
    blocks = []
    for dataset in sorted({r["dataset"] for r in records}):
        metric = primary_metric(reg, dataset)
        direction = direction_of(reg, metric)
        rows = []
        for status in ("ok", "incomplete"):  # incomplete runs are scored but never ranked with complete ones
            runs = [r for r in records if r["dataset"] == dataset and r["status"] == status]
            for label in sorted({method_label(r) for r in runs}):
                mine = [r for r in runs if method_label(r) == label]
                sel = select_setting(mine, metric, direction)
                values = selected_values(mine, metric, sel) if sel else {}
                where = f"{sel.sampler}@{sel.nfe}" if sel and sel.sampler else ""
                for r in mine:
                    if sel and sel.sampler:  # the NFE the host counted for one sample, where recorded
                        counted = next((c.get("nfe_counted") for c in (r.get("cost") or {}).get("sampling", [])
                                        if (c.get("sampler"), c.get("nfe")) == (sel.sampler, sel.nfe)), None)
                        where = f"{sel.sampler}@{counted if counted is not None else sel.nfe}"
                    done = f"incomplete ({float(r.get('budget_spent') or 0):.0%} of budget)" if status == "incomplete" else "ok"
                    rows.append([label, r["seed"], values.get(int(r["seed"])), where, sel.note if sel else "", done])
        rows += [[method_label(r), r["seed"], None, "", "", _failed(r)] for r in records
                 if r["dataset"] == dataset and r["status"] not in ("ok", "incomplete")]
        sign = 1 if direction == "lower" else -1
        rows.sort(key=lambda row: (row[5] != "ok", row[2] is None, sign * row[2] if row[2] is not None else 0, row[0], row[1]))
        what = metric_description(reg, metric)
        blocks.append(f"{dataset}: ranked by {metric}{f' ({what})' if what else ''}, {direction} is better; "
                      "test value at the setting chosen on validation\n"
                      + tabulate(rows, headers=["method", "seed", metric, "sampler@counted NFE", "chosen on", "status"], floatfmt=".4g"))
    return "\n\n".join(blocks)


def _failed(record: dict, width: int = 100) -> str:
    """'failed: <its one-line error>', cut to fit a terminal row."""
    error = " ".join(str(record.get("error") or "").split())
    text = f"{record['status']}: {error}" if error else record["status"]
    return text if len(text) <= width else text[: width - 1] + "…"


def metric_description(reg, output_name: str) -> str:
    """What a metric output measures, from the metric registry ('' if unknown)."""
    for name in reg.metrics.names():
        metric = reg.metrics.get(name)
        for out in metric.outputs:
            if out.name == output_name:
                return out.description or metric.description
    return ""


def _check_environment() -> None:
    """gmbench's environment variables parse, before anything is written (a bad value would
    otherwise surface in the middle of the sweep, or as a failed record for every run)."""
    from gmbench.budget import cap_scale
    from gmbench.runner import _checkpoint_every_steps

    cap_scale()
    _checkpoint_every_steps()


def _errored_values(rec: dict) -> str:
    """``; 2 metric value(s) errored, e.g. likelihood: ValueError: ...``: an ok run whose record holds
    errors instead of some values (a likelihood that returned NaN, a sampler that raised), which
    its board lists under *Settings without a value*; empty when there are none."""
    from gmbench.leaderboard import one_line

    errors = [e for e in rec.get("metrics") or [] if e.get("value") is None and e.get("error")]
    if not errors:
        return ""
    first = errors[0]
    where = first.get("name") or first.get("metric")
    return f"; {len(errors)} metric value(s) errored, e.g. {where}: {one_line(first['error'], 120)}"
