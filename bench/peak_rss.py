"""Run a module as ``__main__`` and print its peak resident memory when it ends.

python -m bench.peak_rss embedder.cli consolidate ...   ->  last line: "peak_rss_bytes N"
"""

from __future__ import annotations

import resource
import runpy
import sys


def main() -> None:
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    finally:
        # ru_maxrss is in KiB on Linux.
        print(
            f"peak_rss_bytes {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}",
            flush=True,
        )


if __name__ == "__main__":
    main()
