"""The ``gmbench`` command line: one module per command group."""

from __future__ import annotations

import os

import click

from gmbench import __version__


class _Group(click.Group):
    """Turns gmbench's expected errors into one-line messages, not tracebacks."""

    def invoke(self, ctx):
        from gmbench.errors import DatasetUnavailableError, EnvironmentSettingError, MethodError
        from gmbench.records import RecordError
        from gmbench.registry import RegistryError

        try:
            return super().invoke(ctx)
        except (RegistryError, RecordError, MethodError, DatasetUnavailableError, EnvironmentSettingError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="gmbench")
def main() -> None:
    """gmbench: which generative method is best for my data, at my compute?"""
    # Hub datasets must fail at once offline instead of retrying for ~25 s;
    # `--online` on commands that load data lifts this.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _register() -> None:
    from gmbench.cli import claims, compare, eval as eval_cmd, leaderboard, listing, new_plugin, run

    main.add_command(run.run)
    main.add_command(claims.claims)
    main.add_command(leaderboard.leaderboard)
    main.add_command(compare.compare)
    main.add_command(new_plugin.new_plugin)
    main.add_command(eval_cmd.eval_)
    for cmd in listing.COMMANDS:
        main.add_command(cmd)
    main.add_command(__import__("gmbench.cli.floor", fromlist=["floor"]).floor)  # gmbench floor (noise-floor records)


_register()
