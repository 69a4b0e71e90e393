"""`python -m gmbench` is the `gmbench` command."""

from gmbench.cli import main

main()
