"""`gmbench new-plugin NAME`: a new, installable method-plugin package from the template."""

from __future__ import annotations

import click


@click.command("new-plugin")
@click.argument("name")
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Parent directory of the new package folder gmbench-NAME (a directory already "
                   "named gmbench-NAME is used as the package folder itself).")
def new_plugin(name, out_dir) -> None:
    """Create gmbench-NAME: pyproject with the entry point, a working method, conformance tests, README, CI."""
    from importlib import metadata

    from gmbench.hookspecs import PROJECT
    from gmbench.template import TemplateError, render

    taken = {ep.name: ep.dist.name if ep.dist else "?" for ep in metadata.entry_points(group=PROJECT)}
    if name in taken:
        raise click.ClickException(f"the plugin name {name!r} is taken by the installed {taken[name]}; choose another name")
    try:
        root = render(name, out_dir)
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {root}\n\nnext:\n  cd {root}\n  pip install -e '.[test]'\n  pytest -q\n"
               f"  gmbench plugins list\n  gmbench run --plugins {name} --budget smoke --out results")
