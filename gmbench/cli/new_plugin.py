"""placeholder (being written)."""
import click


@click.command("new-plugin")
def new_plugin() -> None:
    """Not ready yet."""
    raise click.ClickException("not ready yet")
