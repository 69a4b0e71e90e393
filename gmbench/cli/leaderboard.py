"""`gmbench leaderboard`: markdown boards and plots from run records."""

from __future__ import annotations

import click


class InputError(click.ClickException):
    """An unreadable or malformed record: exit 2, as in `gmbench compare` and `gmbench claims`."""

    exit_code = 2


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for index.md, the boards and their plots.")
@click.option("--allow-mixed", is_flag=True,
              help="Put records with different protocol fingerprints on one board, or curves taken at different "
                   "training fractions on one curve page (marked as such).")
@click.option("--allow-dirty", is_flag=True,
              help="Accept records made from a git tree with uncommitted changes (stated in each page's footer).")
@click.option("--allow-mixed-revisions", is_flag=True,
              help="Accept records from several git revisions (stated in each page's footer).")
@click.option("--same-backbone", is_flag=True,
              help="One board per (dataset, budget, backbone family), e.g. UNet and MLP runs on separate boards, "
                   "so each board holds the network fixed.")
@click.option("--backbone", "backbone", default=None, metavar="FAMILY",
              help="Only runs whose network is of this backbone family (case-insensitive: unet, mlp, transformer).")
@click.option("--format", "fmt", type=click.Choice(["markdown", "html"]), default="markdown", show_default=True,
              help="html: also a static site beside the markdown (index.html, sortable tables, plots, the claims "
                   "report, every record one click away) that a browser opens from disk (docs/html_leaderboard.md).")
def leaderboard(results, out_dir, allow_mixed, allow_dirty, allow_mixed_revisions, same_backbone, backbone, fmt) -> None:
    """Write one markdown board per (dataset, budget) from the records in RESULTS (directories or files),
    and one quality-against-training-compute page per dataset whose records carry curves."""
    from gmbench.cli.checks import check_writable_dir
    from gmbench.leaderboard import dedupe, load_results, write_leaderboards
    from gmbench.plugins import Registries
    from gmbench.records import RecordError

    try:
        records = load_results(results)
    except RecordError as exc:  # unreadable, not a record, or wrongly typed fields: unusable input, as in `gmbench compare`
        raise InputError(str(exc)) from None
    check_writable_dir(out_dir, "--out")
    _, dropped = dedupe(records)
    if dropped:
        click.echo(f"gmbench: {dropped} duplicate record(s) of the same run ignored (the latest is kept)", err=True)
    write = write_leaderboards
    if fmt == "html":
        from gmbench.html_site import write_html_site as write
    paths = write(records, out_dir, Registries(), allow_mixed=allow_mixed, allow_dirty=allow_dirty,
                  allow_mixed_revisions=allow_mixed_revisions, same_backbone=same_backbone, backbone=backbone)
    curves = sum(1 for p in paths if p.name.endswith("__curves.md"))
    boards = sum(1 for p in paths if p.suffix == ".md") - 1 - curves
    also = f" and {curves} curve page(s)" if curves else ""
    click.echo(f"gmbench: {boards} board(s){also} from {len(records) - dropped} run(s) -> {paths[0]}")
