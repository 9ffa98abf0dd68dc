"""``python -m embedder``."""

from embedder.cli import main

main()
