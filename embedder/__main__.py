"""``python -m embedder``."""

from embedder.cli.commands import main

main()
