"""The seed's consolidation entry point, kept command-compatible:

    python consolidate_embeddings.py

With no arguments it merges the shards the embedder wrote for the seed queue
(embeddings/shards) into large, de-duplicated, verified files (embeddings/consolidated); with
``--collection`` (and ``--database``, ``--target-field``) it finds that queue's own default
directories. It is ``embedder consolidate``; see ``embedder consolidate --help`` for every
option. Exit codes: 3 when shards were left in place, 4 when another consolidator holds the
output.
"""

import sys

from embedder.cli import main

if __name__ == "__main__":
    main(["consolidate", *sys.argv[1:]])
