"""`gmbench compare BASELINE CURRENT`: the regression gate for CI.

Exit status: 0 when nothing regressed, 1 on a regression beyond tolerance, a
failed or incomplete run or a run/value that disappeared (a run only in one set is
counted, not failed, with --shared-only), 2 when the inputs cannot be compared
(missing, corrupt or malformed records, mixed protocols, a bad tolerance).
"""

from __future__ import annotations

import click


class InputError(click.ClickException):
    exit_code = 2


@click.command()
@click.argument("baseline", type=click.Path(path_type=str))
@click.argument("current", type=click.Path(path_type=str))
@click.option("--tol", "tols", multiple=True, metavar="METRIC=SPEC",
              help="Tolerance of one metric output: abs:X, rel:X or sd:K, joined by '+' (e.g. fid=rel:0.1). Repeatable.")
@click.option("--default-tol", default=None, metavar="SPEC", help="Tolerance of every other metric.  [default: rel:0.05+abs:0.01]")
@click.option("--allow-mixed", is_flag=True, help="Compare runs even when their protocol fingerprints differ.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also list values within tolerance.")
@click.option("--shared-only", is_flag=True,
              help="Compare only the runs both sets contain; count the others instead of failing on them.")
def compare(baseline, current, tols, default_tol, allow_mixed, fmt, show_all, shared_only) -> None:
    """Compare CURRENT run records with BASELINE (each a directory or a record file).

    Exits 1 if any metric got worse beyond its tolerance, or a run failed, is
    incomplete (stopped at its wall-clock cap) or disappeared (unless --shared-only); 2 if the
    inputs cannot be compared (unreadable or malformed records, mixed protocols, a bad tolerance,
    no run in both sets).
    """
    from gmbench.compare import DEFAULT_TOLERANCE, compare_records, parse_tolerances, render
    from gmbench.leaderboard import dedupe, load_results, metric_directions, run_key
    from gmbench.plugins import Registries
    from gmbench.records import RecordError

    try:
        tolerances = parse_tolerances(tols)
        base = load_results([baseline])
        cur = load_results([current])
        result = compare_records(base, cur, metric_directions(Registries()), tolerances,
                                 default_tol or DEFAULT_TOLERANCE, allow_mixed=allow_mixed,
                                 shared_only=shared_only)
    except RecordError as exc:
        raise InputError(str(exc)) from None
    if result.shared == 0:  # a gate that compared nothing must neither pass nor read as a regression
        keys_b, keys_c = ({run_key(r) for r in dedupe(recs)[0]} for recs in (base, cur))
        raise InputError(f"no run is in both sets ({len(keys_b)} only in {baseline}, "
                         f"{len(keys_c)} only in {current}): nothing was compared; give records of "
                         "the same methods, datasets, budget and seeds")
    click.echo(render(result, fmt, show_all))
    if result.failed:
        click.get_current_context().exit(1)
