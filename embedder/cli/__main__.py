"""``python -m embedder.cli``."""

from embedder.cli import main

main()
