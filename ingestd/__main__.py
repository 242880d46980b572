"""`python -m ingestd` is the `ingestd` command (the demo starts the daemon this way)."""

from ingestd.cli import main

main()
