"""``python -m embedder.cli``."""

from embedder.cli.commands import main

main()
