"""`gmbench claims RESULTS...`: check the registered paper claims on run records.

Exit status: 0, or 1 with ``--strict`` when a claim fails; 2 when the records
cannot be read. See docs/claims.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


class InputError(click.ClickException):
    exit_code = 2


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for machines) instead of markdown.")
@click.option("--strict", is_flag=True, help="Exit 1 when any claim fails.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to FILE instead of printing it.")
def claims(results, as_json, strict, out) -> None:
    """Check every registered paper claim on the run records in RESULTS (directories or files).

    Verdicts: holds / fails (beyond seed noise, paired t-test across seeds, 95%),
    inconclusive (not separable, or fewer than 2 seeds), untested (no records).
    """
    from gmbench.claims import check_claims, render_markdown, summary
    from gmbench.leaderboard import load_results, metric_directions
    from gmbench.plugins import Registries
    from gmbench.records import RecordError

    if out is not None:
        from gmbench.cli.checks import check_writable_file

        check_writable_file(out, "--out")
    try:
        records = load_results(results)
    except RecordError as exc:
        raise InputError(str(exc)) from None
    reg = Registries()
    found = check_claims([reg.claims.get(n) for n in reg.claims.names()], records, metric_directions(reg))
    counts = summary(found)
    if as_json:
        text = json.dumps({"summary": counts, "results": [r.to_dict() for r in found]}, indent=2) + "\n"
    else:
        text = render_markdown(found)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"{', '.join(f'{v} {n}' for v, n in counts.items())}; report written to {out}")
    if strict and counts["fails"]:
        click.get_current_context().exit(1)
