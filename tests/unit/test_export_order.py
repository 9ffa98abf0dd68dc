"""Export's ``_id`` order is MongoDB's (``embedder.ids.sort_key``) for every kind of id the
queue takes, and its listed order places each row at its line."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from bson import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.ids import decode_id, encode_id, sort_key
from embedder.ops.export_order import CorpusOrder, OrderBy, ids_file_rows

ids = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8).filter(
        lambda s: s.encode("utf-8", "surrogatepass") == s.encode("utf-8", "ignore")
    ),
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.booleans(),
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
    ),
)


def keys(values: list[Any]) -> pa.RecordBatch:
    encoded = [encode_id(v) for v in values]
    return pa.record_batch(
        [pa.array([t for t, _ in encoded]), pa.array([k for _, k in encoded])],
        names=["_id", "_id_kind"],
    )


def placed(order: CorpusOrder, rows: int) -> list[Any]:
    return order.ids(rows)


@settings(max_examples=25)  # a work database each: ~0.2 s an example
@given(st.lists(ids, min_size=1, max_size=40, unique_by=lambda v: (type(v), v)))
def test_id_order_is_mongodbs(values: list[Any]) -> None:
    # Values equal across types (1, 1.0, True) are one id to MongoDB: keep one of each.
    distinct = list({sort_key(v): v for v in values}.values())
    con = duckdb.connect()
    order = CorpusOrder(con, OrderBy.ID)
    order.add_keys(0, 0, keys(distinct[: len(distinct) // 2]))
    order.add_keys(1, 0, keys(distinct[len(distinct) // 2 :]))
    found = order.place()
    assert found.rows == len(distinct) and not found.unplaced.count
    exported = placed(order, found.rows)
    assert [sort_key(v) for v in exported] == sorted(sort_key(v) for v in distinct)


def test_an_ids_file_places_rows_at_their_lines(tmp_path: Path) -> None:
    listed = tmp_path / "ids.txt"
    oid = ObjectId()
    listed.write_text(f'"7"\n\n{oid}\n7\n{{"$oid": "{oid}"}}\nabsent\n')
    con = duckdb.connect()
    order = CorpusOrder(con, OrderBy.LISTED, wanted=ids_file_rows(listed))
    order.add_keys(0, 0, keys([7, "7", oid, "stray"]))
    found = order.place()
    assert found.rows == 5  # the blank line is no row
    # The plain "7" matches the int and the string 7: the string took its own line first.
    assert placed(order, found.rows) == ["7", oid, 7, None, None]
    assert found.missing.sample == [f'{{"$oid": "{oid}"}}', "absent"]
    assert found.ids_listed_twice.count == 0
    assert found.unplaced.sample == ["stray"]
    assert decode_id(*encode_id(oid)) == oid


def test_the_work_database_draws_no_progress_bar(tmp_path: Path) -> None:
    # DuckDB draws one on stdout for a query past 2 s, and stdout carries export's (and
    # verify's) --json. Asked in a process of its own: under pytest DuckDB turns it off itself.
    script = (
        "import sys; from pathlib import Path; from embedder.storage.workdb import open_work_db; "
        "con = open_work_db(Path(sys.argv[1]), 64 << 20); "
        "print(con.execute(\"SELECT current_setting('enable_progress_bar')\").fetchall())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[(False,)]"
