"""What every CLI process pays for, at start and at exit (a short job's start-to-exit time,
bench.start_to_exit).

`embedder embed` starts without importing what only other commands use: DuckDB and the
consolidator, pyarrow's datasets with pandas, the server's web framework. At exit the objects
the imports made are not walked by a last garbage collection.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
from embedder.cli import cli
ctx = cli.make_context("embedder", ["embed", "--help"], resilient_parsing=True)
assert cli.get_command(ctx, "embed") is not None
print(",".join(sorted(m for m in {MODULES} if m in sys.modules)))
"""

ONLY_FOR_OTHER_COMMANDS = ("duckdb", "pandas", "embedder.storage.consolidate", "embedder.serve.app")


def test_the_embed_command_loads_no_other_commands_modules() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK.replace("{MODULES}", repr(set(ONLY_FOR_OTHER_COMMANDS)))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "", done.stdout


@pytest.mark.parametrize("name", ["consolidate", "serve", "status", "embed"])
def test_every_command_is_still_found(name: str) -> None:
    from embedder.cli import cli

    ctx = cli.make_context("embedder", ["--help"], resilient_parsing=True)
    assert name in cli.list_commands(ctx)
    assert cli.get_command(ctx, name) is not None


AT_EXIT = """
import atexit, gc
from embedder.cli import main
# Registered before main's, so it runs after them (last in, first out).
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
try:
    main(["embed", "--help"])
except SystemExit:
    pass
"""


def test_the_last_garbage_collections_skip_what_the_run_made() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AT_EXIT], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().endswith("frozen at exit: True"), done.stdout
