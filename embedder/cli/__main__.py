"""``python -m embedder.cli``."""

from embedder.cli import main

# Guarded: worker processes (embed --processes) import the main module again.
if __name__ == "__main__":
    main()
