"""``embedder load``: a file corpus streamed into a MongoDB collection, resumably.

Each record becomes ``{"_id": <its id>, <text field>: <its text>}`` (the id from the id field,
or the record's position in the file; the text at the same dotted path it was read from), so
``embedder embed`` takes the collection with the same ``--text-field``. Records go in with
unordered bulk inserts a batch at a time, streamed with bounded memory (a pickle excepted: it
is loaded whole).

A rerun skips what is there: ids are deterministic, so a record already in the collection
answers with a duplicate-key error, counted as already there, never as a failure. A record
whose id the collection holds with another text (a duplicate id in the file, or another
corpus loaded before) is a bad record. Bad records (unparsable lines, missing ids, missing,
empty or non-string texts) are reported with their line or row and reason, never stop the
load and are written to the failures file. MongoDB being unreachable is waited out up to the
outage bound (a batch is safe to send again), then the load stops; any other write error is
reported with its record.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from embedder.errors import ConfigurationError, QueueError
from embedder.files.chunk_marks import Failure
from embedder.files.readers import CorpusReader
from embedder.files.records import BadCause, BadRecord, CorpusSource, FileRecord
from embedder.queue.retry import MongoRetry
from embedder.worker.documents import Rejected, get_path, to_doc

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
SAMPLE = 10
_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class LoadSettings:
    source: CorpusSource
    database: str
    collection: str
    batch_size: int = 1000
    failures_path: Path | None = None  # every bad record, one JSON object a line
    outage_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 100_000:
            raise ConfigurationError("the batch size must be between 1 and 100000")
        if not self.collection or not self.database:
            raise ConfigurationError("name the database and the collection to load into")


def where(failure: Failure) -> str:
    """Where a bad record is, for people: its line or row, and its id when known."""
    at = f"line/row {failure.line_or_row}"
    return at + (f" (id {failure.id})" if failure.id is not None else "") + f": {failure.reason}"


@dataclass
class LoadReport:
    source: str
    target: str
    records: int = 0  # records read, bad ones included
    inserted: int = 0
    already_there: int = 0
    bad: int = 0
    bad_by_cause: collections.Counter[str] = field(default_factory=collections.Counter)
    bad_sample: list[str] = field(default_factory=list)
    write_errors: int = 0
    write_error_sample: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every record loaded or already there, bar the bad ones: nothing failed to write."""
        return self.write_errors == 0

    def note_bad(self, failure: Failure) -> None:
        self.bad += 1
        self.bad_by_cause[failure.cause] += 1
        if len(self.bad_sample) < SAMPLE:
            self.bad_sample.append(where(failure))

    def lines(self) -> list[str]:
        rate = self.records / self.elapsed_s if self.elapsed_s else 0.0
        lines = [
            f"load: {'OK' if self.ok else 'FAILED'}: {self.records} records from {self.source} "
            f"into {self.target} in {self.elapsed_s}s ({rate:,.0f}/s)",
            f"  inserted {self.inserted}, already there {self.already_there}, bad {self.bad}"
            + (
                f" ({', '.join(f'{c}: {n}' for c, n in self.bad_by_cause.most_common())})"
                if self.bad
                else ""
            ),
        ]
        lines += [f"  bad record at {text}" for text in self.bad_sample]
        if self.write_errors:
            lines.append(f"  write errors: {self.write_errors}")
            lines += [f"  not written: {text}" for text in self.write_error_sample]
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def load(client: AsyncMongoClient[dict[str, Any]], settings: LoadSettings) -> LoadReport:
    """Raises ``QueueError`` when MongoDB stays unreachable past the outage bound."""
    target = client[settings.database][settings.collection]
    loader = _Loader(target, settings)
    started = last_log = time.monotonic()
    try:
        with CorpusReader(settings.source) as reader:
            for batch in itertools.batched(reader.records(), settings.batch_size):
                await loader.load(batch)
                if time.monotonic() - last_log >= _LOG_EVERY_S:
                    last_log = time.monotonic()
                    loader.log_progress()
    finally:
        loader.close()
        loader.report.elapsed_s = round(time.monotonic() - started, 2)
    return loader.report


class _Loader:
    """Loads batches of records into one collection, keeping the report and failures file."""

    def __init__(self, target: AsyncCollection[dict[str, Any]], settings: LoadSettings) -> None:
        self._target = target
        self._text_field = settings.source.text_field
        self._retry = MongoRetry(settings.outage_timeout_s)
        self.report = LoadReport(settings.source.uri, f"{settings.database}.{settings.collection}")
        self._failures = _open_failures(settings.failures_path)

    async def load(self, batch: Sequence[FileRecord | BadRecord]) -> None:
        docs, records = self._documents(batch)
        if not docs:
            return
        errors = await self._retry(
            f"inserting into {self.report.target}", lambda: self._insert(docs)
        )
        duplicates = [e["index"] for e in errors if _id_taken(e)]
        for error in errors:
            if not _id_taken(error):
                self._write_failed(records[error["index"]], str(error.get("errmsg")))
        self.report.inserted += len(docs) - len(errors)
        if duplicates:
            await self._sort_duplicates([records[i] for i in duplicates])

    def log_progress(self) -> None:
        report = self.report
        log.info(
            "load: %d records read, %d inserted, %d already there, %d bad",
            report.records,
            report.inserted,
            report.already_there,
            report.bad,
        )

    def close(self) -> None:
        if self._failures is not None:
            self._failures.close()

    def _documents(
        self, batch: Sequence[FileRecord | BadRecord]
    ) -> tuple[list[dict[str, Any]], list[FileRecord]]:
        """The batch's documents to insert, with the record each came from; the bad ones
        noted."""
        docs: list[dict[str, Any]] = []
        records: list[FileRecord] = []
        for record in batch:
            self.report.records += 1
            if isinstance(record, BadRecord):
                self._fail(record, record.reason, record.cause.value)
                continue
            doc = {"_id": record.id, **_nested(self._text_field, record.text)}
            judged = to_doc(doc, self._text_field)
            if isinstance(judged, Rejected):
                self._fail(record, judged.reason, judged.cause.value)
                continue
            docs.append(doc)
            records.append(record)
        return docs, records

    async def _insert(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The write errors of one unordered insert (none when all went in)."""
        try:
            await self._target.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise QueueError(
                    f"inserting into {self.report.target}: write concern not met: "
                    f"{exc.details['writeConcernErrors'][0].get('errmsg')}"
                ) from exc
            errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
            return errors
        return []

    async def _sort_duplicates(self, records: list[FileRecord]) -> None:
        """Ids the collection already holds: the same record loaded before (a rerun) is
        already there; another text under the id is a duplicate id, a bad record."""
        field = self._text_field

        async def existing() -> dict[Any, Any]:
            cursor = self._target.find({"_id": {"$in": [r.id for r in records]}}, {field: 1})
            return {d["_id"]: get_path(d, field) async for d in cursor}

        held = await self._retry(f"reading back ids already in {self.report.target}", existing)
        for record in records:
            if held.get(record.id) == record.text:
                self.report.already_there += 1
            else:
                self._fail(
                    record,
                    f"id {record.id!r} is already in {self.report.target} with another text "
                    "(a duplicate id in the file, or another corpus loaded before)",
                    BadCause.DUPLICATE_ID.value,
                )

    def _write_failed(self, record: FileRecord, message: str) -> None:
        report = self.report
        report.write_errors += 1
        if len(report.write_error_sample) < SAMPLE:
            report.write_error_sample.append(
                f"line/row {record.line_or_row} (id {record.id}): {message}"
            )

    def _fail(self, record: FileRecord | BadRecord, reason: str, cause: str) -> None:
        failure = Failure(record.position, record.line_or_row, record.id, reason, cause)
        self.report.note_bad(failure)
        if self.report.bad <= SAMPLE:
            log.warning("load: bad record at %s", where(failure))
        if self._failures is not None:
            self._failures.write(failure.to_line())


def _id_taken(error: dict[str, Any]) -> bool:
    """A duplicate key on ``_id`` (another unique index of the collection is a write error
    like any other; servers before 4.2 name no key pattern)."""
    return error.get("code") == DUPLICATE_KEY and error.get("keyPattern", {"_id": 1}) == {"_id": 1}


def _nested(path: str, value: object) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for the dotted path ``a.b``."""
    parts = path.split(".")
    doc: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        doc = {part: doc}
    return doc


def _open_failures(path: Path | None) -> IO[bytes] | None:
    """The failures file, emptied: a rerun reads every record again and finds them again."""
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("wb")
    except OSError as exc:
        raise ConfigurationError(f"cannot write the failures file {path}: {exc}") from exc
