"""`python -m sluice.cli` is the `sluice` command."""

from sluice.cli import main

main()
