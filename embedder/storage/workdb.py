"""A DuckDB work database on local disk that stays under a memory limit by spilling."""

from __future__ import annotations

from pathlib import Path

import duckdb


def open_work_db(directory: Path, memory_limit: int) -> duckdb.DuckDBPyConnection:
    """An on-disk database in ``directory``: tables larger than ``memory_limit`` spill there."""
    con = duckdb.connect(str(directory / "work.duckdb"))
    con.execute(f"SET memory_limit = '{max(memory_limit // (1 << 20), 64)}MB'")
    con.execute(f"SET temp_directory = '{directory / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")
    # Its bar goes to stdout, which carries the commands' reports (--json).
    con.execute("SET enable_progress_bar = false")
    return con
