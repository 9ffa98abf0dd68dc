"""The seed's entry point, kept command-compatible:

    python embed_tweets.py --collection tweets \\
        --tei-urls "http://localhost:18080/embed,http://localhost:18081/embed" --batch-size 32

It is ``embedder embed``; see ``embedder embed --help`` for every option.
"""

import sys

from embedder.cli import main

if __name__ == "__main__":
    main(["embed", *sys.argv[1:]])
