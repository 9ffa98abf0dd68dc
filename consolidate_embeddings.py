"""The seed's consolidation entry point, kept command-compatible:

    python consolidate_embeddings.py

With no arguments it merges the shards the embedder wrote (embeddings/shards) into large,
de-duplicated, verified files (embeddings/consolidated). It is ``embedder consolidate``;
see ``embedder consolidate --help`` for every option.
"""

import sys

from embedder.cli import main

if __name__ == "__main__":
    main(["consolidate", *sys.argv[1:]])
