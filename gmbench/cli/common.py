"""Helpers shared by the command modules."""

from __future__ import annotations

import json

import click
from tabulate import tabulate


def emit(rows: list[dict], as_json: bool, headers: list[str] | None = None) -> None:
    """Print rows as JSON (for machines) or as a plain table (for people)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo("(none)")
        return
    headers = headers or list(rows[0])
    click.echo(tabulate([[_cell(r.get(h)) for h in headers] for r in rows], headers=headers, tablefmt="simple"))


def _cell(v):
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return v
