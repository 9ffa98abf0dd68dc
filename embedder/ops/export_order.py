"""Corpus order for ``embedder export``: the matrix row each row of the consolidated output
goes to, worked out in a DuckDB work database so any output size fits in bounded memory.

Three orders:

* ``position``: the ``_id`` is the record's 0-based position in a file corpus (what
  ``embed-files`` writes without ``--id-field``); row ``p`` of the matrix is the row of id ``p``.
* ``id``: MongoDB's ``_id`` order, a BSON type at a time as ``embedder.ids`` defines it
  (numbers, then strings by their UTF-8 bytes, then ObjectIds, booleans, dates).
* listed: the ids wanted, in order: a file corpus's selected positions read from its plan
  (and its ids from the corpus, where they come from an id field), or an ids file of one id a
  line. A plain line is the id's text (``42``, ``abc``, an ObjectId's hex) and matches an id of
  any kind with that text; a line of extended JSON (``{"$oid": "..."}``, ``"42"`` for the
  string) matches that exact id.

The output's rows are read once for their keys (``add_keys``); ``place`` then gives every row
its matrix row (or none, for a row the order has no place for) and finds what does not fit:
places nobody holds (bad records among them, where the corpus's failures say so), ids held
twice, places held twice.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from bson import json_util

from embedder.errors import ConfigurationError
from embedder.files.chunk_marks import Failure
from embedder.files.plan import Chunk, ChunkPlan
from embedder.files.readers import CorpusReader
from embedder.files.records import FileRecord
from embedder.ids import decode_id, encode_id, id_type
from embedder.ops.verify import Finding

SAMPLE = 10
_READ_ROWS = 65_536
# Rank of an id of a kind the work queue never writes: after every kind it does.
_OTHER_RANK = 100

_KEYS = pa.schema(
    [
        ("file", pa.int32()),
        ("row", pa.int64()),
        ("_id", pa.string()),
        ("_id_kind", pa.string()),
        # MongoDB's order of an id of kind "ejson" (computed in Python); the other kinds'
        # is computed in SQL from their text.
        ("rank", pa.int16()),
        ("num", pa.float64()),
        ("sbytes", pa.binary()),
    ]
)
# The ids wanted, in order. ``_id_kind`` null: any kind with that text (a plain ids-file line);
# ``_id`` null: a place no row can fill (a bad record of a file corpus, whose id is unknown).
WANTED = pa.schema(
    [
        ("ord", pa.int64()),
        ("_id", pa.string()),
        ("_id_kind", pa.string()),
        ("label", pa.string()),  # how a missing row is named
        ("position", pa.int64()),  # in a file corpus
    ]
)
_BAD = pa.schema([("position", pa.int64()), ("label", pa.string())])


class OrderBy(enum.StrEnum):
    POSITION = "position"
    ID = "id"
    LISTED = "listed"


@dataclass
class Placement:
    """What placing the output's rows found."""

    rows: int = 0  # rows of the matrix
    expected_rows: int | None = None  # None: nothing says how many rows the corpus has
    missing: Finding = field(default_factory=Finding)  # places no row of the output holds
    missing_bad: Finding = field(default_factory=Finding)  # those that are known bad records
    missing_unnamed: int = 0  # rows known to be missing whose ids nothing names
    duplicate_ids: Finding = field(default_factory=Finding)  # rows beyond the first of an id
    shared_places: Finding = field(default_factory=Finding)  # places two or more rows claim
    unplaced: Finding = field(default_factory=Finding)  # rows the order has no place for
    ids_listed_twice: Finding = field(default_factory=Finding)


class CorpusOrder:
    """The order of one export, in the work database ``con``.

    ``wanted``: the listed order's rows (``WANTED``); ``bad``: a file corpus's bad records,
    so that the places they leave empty are named as such.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        order_by: OrderBy,
        *,
        expect_rows: int | None = None,
        wanted: Iterable[pa.RecordBatch] = (),
        bad: Iterable[Failure] = (),
    ) -> None:
        self._con = con
        self.order_by = order_by
        self._expect_rows = expect_rows
        con.execute(f"CREATE TABLE keys ({_columns(_KEYS)})")
        con.execute(f"CREATE TABLE wanted ({_columns(WANTED)})")
        con.execute(f"CREATE TABLE bad ({_columns(_BAD)})")
        for batch in wanted:
            _append(con, "wanted", batch)
        for rows in itertools.batched(
            ((f.position, f"{f.position} ({f.cause})") for f in bad), _READ_ROWS
        ):
            _append(con, "bad", _record_batch(rows, _BAD))

    def add_keys(self, file: int, first_row: int, batch: pa.RecordBatch) -> None:
        """The keys of rows ``first_row...`` of output file number ``file``."""
        n = batch.num_rows
        ids = batch.column("_id").cast(pa.string())
        kinds = batch.column("_id_kind").cast(pa.string())
        rank: pa.Array = pa.nulls(n, pa.int16())
        num: pa.Array = pa.nulls(n, pa.float64())
        sbytes: pa.Array = pa.nulls(n, pa.binary())
        if self.order_by is OrderBy.ID:
            rank, num, sbytes = _ejson_order(ids, kinds)
        _append(
            self._con,
            "keys",
            pa.record_batch(
                [
                    pa.array(np.full(n, file, np.int32)),
                    pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
                    ids,
                    kinds,
                    rank,
                    num,
                    sbytes,
                ],
                schema=_KEYS,
            ),
        )

    def place(self) -> Placement:
        """Give every row its matrix row, and find what does not fit."""
        found = Placement()
        present = self._scalar("SELECT count(*) FROM keys")
        if self.order_by is OrderBy.POSITION:
            self._place_by_position(found)
        elif self.order_by is OrderBy.ID:
            self._con.execute(
                "CREATE TABLE mapped AS SELECT *, "
                f"row_number() OVER (ORDER BY {_MONGO_ORDER}) - 1 AS target FROM keys"
            )
            found.rows = present
            found.expected_rows = self._expect_rows
            if self._expect_rows is not None:
                found.missing_unnamed = max(0, self._expect_rows - present)
        else:
            self._place_listed(found)
        found.duplicate_ids = self._finding(
            "SELECT _id AS name, min(target) AS sort FROM mapped "
            "GROUP BY _id, _id_kind HAVING count(*) > 1",
            count=present - self._scalar("SELECT count(DISTINCT (_id, _id_kind)) FROM keys"),
        )
        found.shared_places = self._finding(
            "SELECT target AS name, target AS sort FROM mapped WHERE target IS NOT NULL "
            "GROUP BY target HAVING count(DISTINCT (_id, _id_kind)) > 1"
        )
        found.unplaced = self._finding(
            "SELECT _id AS name, row AS sort FROM mapped WHERE target IS NULL"
        )
        return found

    def _place_by_position(self, found: Placement) -> None:
        position = "TRY_CAST(_id AS BIGINT)"
        top = self._scalar(
            f"SELECT coalesce(max({position}) + 1, 0) FROM keys WHERE _id_kind = 'int'"
        )
        found.expected_rows = self._expect_rows
        found.rows = self._expect_rows if self._expect_rows is not None else top
        self._con.execute(
            f"CREATE TABLE mapped AS SELECT *, CASE WHEN _id_kind = 'int' AND {position} >= 0 "
            f"AND {position} < {found.rows} THEN {position} END AS target FROM keys"
        )
        missing = f"SELECT p FROM range({found.rows}) r(p) ANTI JOIN mapped m ON r.p = m.target"
        found.missing = self._finding(f"SELECT p AS name, p AS sort FROM ({missing})")
        found.missing_bad = self._finding(
            f"SELECT b.label AS name, b.position AS sort FROM ({missing}) x "
            "JOIN bad b ON b.position = x.p"
        )

    def _place_listed(self, found: Placement) -> None:
        self._con.execute(
            "CREATE TABLE mapped AS SELECT k.*, min(w.ord) AS target FROM keys k "
            "LEFT JOIN wanted w ON k._id = w._id "
            "AND (w._id_kind IS NULL OR w._id_kind = k._id_kind) "
            "GROUP BY ALL"
        )
        found.rows = self._scalar("SELECT count(*) FROM wanted")
        found.expected_rows = found.rows
        missing = "SELECT w.* FROM wanted w ANTI JOIN mapped m ON w.ord = m.target"
        found.missing = self._finding(f"SELECT label AS name, ord AS sort FROM ({missing})")
        found.missing_bad = self._finding(
            f"SELECT b.label AS name, x.ord AS sort FROM ({missing}) x "
            "JOIN bad b ON b.position = x.position"
        )
        found.ids_listed_twice = self._finding(
            "SELECT any_value(label) AS name, min(ord) AS sort FROM wanted "
            "WHERE _id IS NOT NULL GROUP BY _id, _id_kind HAVING count(*) > 1"
        )

    def targets(self) -> Iterator[tuple[int, np.ndarray]]:
        """Each output file's rows' matrix rows (-1: none), in file and row order, a batch at a
        time: ``(file, targets)``."""
        for batch in self._stream(
            "SELECT file, coalesce(target, -1) AS target FROM mapped ORDER BY file, row"
        ):
            files = batch.column("file").to_numpy()
            targets = batch.column("target").to_numpy()
            # A batch may span files: cut it where the file changes.
            cuts = np.flatnonzero(np.diff(files)) + 1
            for start, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), len(files)], strict=True):
                yield int(files[start]), targets[start:stop]

    def unfilled(self, rows: int) -> Iterator[np.ndarray]:
        """Matrix rows that no row of the output fills, a batch at a time."""
        for batch in self._stream(
            f"SELECT p FROM range({rows}) r(p) ANTI JOIN mapped m ON r.p = m.target"
        ):
            yield batch.column(0).to_numpy()

    def ids(self, rows: int) -> list[Any]:
        """The matrix rows' ids, as MongoDB (or the corpus) holds them; None where unfilled."""
        ids: list[Any] = [None] * rows
        for batch in self._stream(
            "SELECT target, _id, _id_kind FROM mapped WHERE target IS NOT NULL ORDER BY target"
        ):
            for target, text, kind in zip(
                batch.column(0).to_pylist(),
                batch.column(1).to_pylist(),
                batch.column(2).to_pylist(),
                strict=True,
            ):
                ids[target] = decode_id(text, kind)
        return ids

    def _finding(self, sql: str, *, count: int | None = None) -> Finding:
        """How many rows ``sql`` gives (columns ``name`` and ``sort``), unless ``count`` says
        otherwise, and the first few."""
        if count is None:
            count = self._scalar(f"SELECT count(*) FROM ({sql})")
        rows = self._con.execute(
            f"SELECT name FROM ({sql}) ORDER BY sort, name LIMIT {SAMPLE}"
        ).fetchall()
        return Finding(count, [str(row[0]) for row in rows])

    def _stream(self, sql: str) -> Iterator[pa.RecordBatch]:
        yield from self._con.sql(sql).to_arrow_reader(_READ_ROWS)

    def _scalar(self, sql: str) -> int:
        rows = self._con.execute(sql).fetchall()
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0


# MongoDB's order of ids in SQL: by BSON type (embedder.ids.ID_TYPES' ranks), then within it.
# Integers compare by value (exactly: a double alone would tie large neighbours), strings by
# their UTF-8 bytes, ObjectIds by their bytes (their lowercase hex sorts the same way).
_MONGO_ORDER = (
    "CASE _id_kind WHEN 'int' THEN 2 WHEN 'string' THEN 3 WHEN 'objectid' THEN 7 ELSE rank END, "
    "CASE WHEN _id_kind = 'int' THEN CAST(_id AS DOUBLE) ELSE num END, "
    "CASE WHEN _id_kind = 'int' THEN CAST(_id AS HUGEINT) END, "
    "CASE WHEN _id_kind IN ('string', 'objectid') THEN encode(_id) ELSE sbytes END, "
    "_id"
)


def _ejson_order(ids: pa.Array, kinds: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """The order columns of the ids stored as extended JSON (booleans, dates, doubles, and
    kinds the work queue never writes); null for the others."""
    n = len(ids)
    ranks: list[int | None] = [None] * n
    nums: list[float | None] = [None] * n
    raw: list[bytes | None] = [None] * n
    texts = ids.to_pylist()
    for i, kind in enumerate(kinds.to_pylist()):
        if kind != "ejson":
            continue
        ranks[i], nums[i], raw[i] = _ejson_key(texts[i])
    return (
        pa.array(ranks, pa.int16()),
        pa.array(nums, pa.float64()),
        pa.array(raw, pa.binary()),
    )


def _ejson_key(text: str) -> tuple[int, float | None, bytes | None]:
    value = decode_id(text, "ejson")
    try:
        rank = id_type(value).rank
    except ConfigurationError:
        return _OTHER_RANK, None, text.encode()
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return rank, moment.timestamp() * 1000, None
    if isinstance(value, str):  # not written as ejson by encode_id, but harmless
        return rank, None, value.encode("utf-8", "surrogatepass")
    return rank, float(value), None


# -- what is wanted -------------------------------------------------------------------------


def ids_file_rows(path: Path) -> Iterator[pa.RecordBatch]:
    """An ids file's lines as ``WANTED`` rows, a batch at a time; blank lines are skipped."""

    def rows() -> Iterator[tuple[int, str, str | None, str, None]]:
        place = 0
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                text = line.strip()
                if text:
                    yield (place, *_id_of(text, number, path), text, None)
                    place += 1

    try:
        for batch in itertools.batched(rows(), _READ_ROWS):
            yield _record_batch(batch, WANTED)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the ids file {path}: {exc}") from exc


def corpus_rows(plan: ChunkPlan) -> Iterator[pa.RecordBatch]:
    """A file corpus's selected positions (every part's), in order, as ``WANTED`` rows. Ids
    are the positions, or (with an id field) read from the corpus; a record without a usable
    id, or whose id an earlier record has, has a place no row fills."""
    chunks = sorted(plan.chunks, key=lambda c: c.start)
    if plan.source.id_field is None:
        rows: Iterable[tuple[int, str | None, str | None, str, int]] = (
            (p, str(p), "int", str(p), p) for p in _positions(chunks)
        )
    else:
        rows = _listed_ids(plan, chunks)
    ordered = ((place, *row[1:]) for place, row in enumerate(rows))
    for batch in itertools.batched(ordered, _READ_ROWS):
        yield _record_batch(batch, WANTED)


def _positions(chunks: list[Chunk]) -> Iterator[int]:
    for chunk in chunks:
        yield from chunk.only or range(chunk.start, chunk.stop)


def _listed_ids(
    plan: ChunkPlan, chunks: list[Chunk]
) -> Iterator[tuple[int, str | None, str | None, str, int]]:
    with CorpusReader(plan.source) as reader:
        for chunk in chunks:
            for record in reader.records(chunk.range):
                p = record.position
                if not chunk.takes(p):
                    continue
                if isinstance(record, FileRecord) and p not in plan.duplicates:
                    text, kind = encode_id(record.id)
                    yield p, text, kind, f"{p} (id {record.id})", p
                else:
                    yield p, None, None, str(p), p


def _id_of(text: str, number: int, path: Path) -> tuple[str, str | None]:
    """A line's id: its text (any kind), or the exact id its extended JSON names."""
    if not text.startswith(("{", '"')):
        return text, None
    try:
        return encode_id(json_util.loads(text))
    except ValueError as exc:
        raise ConfigurationError(f"{path} line {number}: not an id: {exc}") from exc


def _record_batch(rows: Sequence[Any], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    return pa.record_batch(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


def _columns(schema: pa.Schema) -> str:
    types = {
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR",
        pa.binary(): "BLOB",
    }
    return ", ".join(f'"{f.name}" {types[f.type]}' for f in schema)


def _append(con: duckdb.DuckDBPyConnection, table: str, batch: pa.RecordBatch) -> None:
    con.register("incoming", pa.Table.from_batches([batch]))
    con.execute(f"INSERT INTO {table} SELECT * FROM incoming")
    con.unregister("incoming")
