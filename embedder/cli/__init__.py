"""The ``embedder`` command line: parses options, builds settings, delegates."""

from embedder.cli.commands import main

__all__ = ["main"]
