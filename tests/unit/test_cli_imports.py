"""`embedder embed` starts without importing what only other commands use.

Every worker start pays for its imports (a short job's start-to-exit time, bench.start_to_exit):
DuckDB and the consolidator, pyarrow's datasets with pandas, the server's web framework are
loaded only by the commands that use them.
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
