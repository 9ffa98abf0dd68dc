"""Reading a file corpus as one stream of typed records, with bounded memory.

API::

    source = open_source("articles.jsonl.zst", text_field="body", id_field="meta.id")
    for record in iter_records(source):                 # the whole corpus, in position order
        if isinstance(record, BadRecord): ...           # never an exception for bad input
    with CorpusReader(source) as reader:                # many ranges from one reader
        for record in reader.records(RowRange(1000, 2000)): ...

Formats (``format="auto"`` goes by the name; a directory is a Parquet dataset):

- **NDJSON** (``.jsonl``, ``.ndjson``, ``.json``; plain, ``.gz`` or ``.zst``): one JSON object
  a line, streamed; ``position`` is the 0-based line number; blank lines are skipped. An
  uncompressed file is read from a range's byte offset; a compressed one cannot be seeked, so
  a range is reached by decompressing from the start, or from where the reader's previous
  range ended when ranges come in ascending order (how a worker claims them).
- **Parquet**: one file or a dataset directory (its files in path order, names starting with
  ``.`` or ``_`` ignored), local or any ``pyarrow.fs`` URI; read a row group at a time, and
  only the row groups a range overlaps.
- **CSV / TSV** (plain or compressed by name): a header row, then records; fields may hold
  quoted newlines. Streamed; a range is reached by parsing from the start.
- **pickle**: a list of strings, a list of dicts, a dict of id to text (or to a dict), a dict
  of columns (``{"id": [...], "text": [...]}``), a pandas DataFrame or Series (pandas must be
  installed to unpickle one: ``embedder[pandas]``). A pickle cannot be streamed: it is loaded
  whole, once per reader, and the log says so. Unpickling runs code: load only pickles you
  trust.

Fields are dotted paths into a record (``meta.title``); in a CSV they are column names. A
record's id is its ``id_field`` value (a string or an integer) or, without one, its position.
Bad input (a broken JSON line, a CSV row of the wrong width, a missing or ill-typed id) comes
out as a :class:`BadRecord`; the text is passed on unchecked, for
:func:`embedder.worker.documents.to_doc` to judge as it judges a MongoDB doc's. A corpus that
cannot be read at all (no such file, a column that no file has) raises ``ConfigurationError``
or ``StorageError``.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import numbers
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.errors import ConfigurationError, StorageError
from embedder.files.records import (
    FORMATS,
    BadCause,
    BadRecord,
    CorpusSource,
    FileRecord,
    Format,
    Record,
    RecordId,
    RowRange,
)
from embedder.storage.filesystems import open_root
from embedder.worker.documents import MISSING, get_path

log = logging.getLogger(__name__)

_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".pkl": "pickle",
    ".pickle": "pickle",
}
# What pyarrow's compression="detect" recognises by name.
_COMPRESSED = (".gz", ".zst", ".zstd", ".bz2", ".lz4")
_UTF8_BOM = b"\xef\xbb\xbf"
_READ_BUFFER = 1 << 20
_PARQUET_BATCH_ROWS = 1024
_CSV_BLOCK = 4 << 20
_PICKLE_SLICE = 4096  # DataFrame rows turned into lists at a time
_QUOTED = 80  # characters of an unparsable CSV row quoted in its reason
_NO_END = 1 << 62  # the stop of a range that has none
_POSITIONAL = object()  # an item whose id is its position (or in its own id field)


def open_source(
    uri: str,
    format: str = "auto",
    *,
    text_field: str = "text",
    id_field: str | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> CorpusSource:
    """A :class:`CorpusSource` with its format resolved (``auto``: by the name; a directory
    is a Parquet dataset); refuses a corpus that does not exist."""
    fs, path = open_root(uri, create=False, filesystem=filesystem)
    info = _file_info(fs, path, uri)
    if format == "auto":
        resolved = "parquet" if info.type == pafs.FileType.Directory else detect_format(uri)
    elif format in FORMATS:
        resolved = format
    else:
        raise ConfigurationError(f"unknown corpus format {format!r} (auto, {', '.join(FORMATS)})")
    if info.type == pafs.FileType.Directory and resolved != "parquet":
        raise ConfigurationError(f"{uri} is a directory: only a Parquet dataset can be one")
    return CorpusSource(uri, resolved, text_field, id_field)


def detect_format(uri: str) -> Format:
    """The format a file's name says (a compression suffix such as ``.zst`` looked through)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    ext = name[name.rfind(".") :] if "." in name else ""
    try:
        return _SUFFIXES[ext]
    except KeyError:
        raise ConfigurationError(
            f"cannot tell the format of {uri!r} from its name; name it with --format "
            f"({', '.join(FORMATS)})"
        ) from None


def iter_records(source: CorpusSource, rows: RowRange | None = None) -> Iterator[Record]:
    """The corpus's records (those of ``rows`` only, when given) in position order."""
    with CorpusReader(source) as reader:
        yield from reader.records(rows)


class CorpusReader:
    """Reads ranges of one corpus; keeps what is worth keeping between ranges (a loaded
    pickle, a compressed NDJSON stream's place). Not for concurrent use."""

    def __init__(self, source: CorpusSource, *, filesystem: pafs.FileSystem | None = None) -> None:
        self.source = source
        self._fs, self._path = open_root(source.uri, create=False, filesystem=filesystem)
        self._pickled: _Pickled | None = None
        self._stream: _LineStream | None = None  # a compressed NDJSON file, where it was left

    @property
    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """The corpus's filesystem and its path there."""
        return self._fs, self._path

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._pickled = None

    def count(self) -> int:
        """Positions in the corpus: lines of an NDJSON file (blank ones included), rows of a
        Parquet dataset or CSV, items of a pickle. A streaming pass where the format keeps no
        count (NDJSON, CSV)."""
        try:
            if self.source.format == "parquet":
                files = parquet_files(self._fs, self._path)
                return sum(
                    pq.ParquetFile(self._fs.open_input_file(f)).metadata.num_rows for f in files
                )
            if self.source.format == "pickle":
                if self._pickled is None:
                    self._pickled = self._load_pickle()
                return self._pickled.size
            if self.source.format == "jsonl":
                return sum(1 for _ in self._sequential_lines(0).upto(_NO_END))
            return sum(batch.num_rows for batch in self._csv_batches([]))
        except (OSError, pa.ArrowIOError) as exc:
            raise StorageError(f"cannot read {self.source.uri}: {exc}") from exc

    def records(self, rows: RowRange | None = None) -> Iterator[Record]:
        """The records at the positions of ``rows`` (all of them without), in order."""
        wanted = rows or RowRange(0, _NO_END)
        fmt = self.source.format
        try:
            if fmt == "jsonl":
                yield from self._jsonl(wanted)
            elif fmt == "parquet":
                yield from self._parquet(wanted)
            elif fmt in ("csv", "tsv"):
                yield from self._csv(wanted)
            else:
                yield from self._pickle(wanted)
        except (OSError, pa.ArrowIOError) as exc:
            raise StorageError(f"cannot read {self.source.uri}: {exc}") from exc

    # -- NDJSON -------------------------------------------------------------------------

    def _jsonl(self, rows: RowRange) -> Iterator[Record]:
        if (
            rows.offset is not None
            and rows.end_offset is not None
            and not is_compressed(self._path)
        ):
            file = self._fs.open_input_file(self._path)
            file.seek(rows.offset)
            lines = _LineStream(_bounded(file, rows.end_offset - rows.offset), rows.start)
        else:
            lines = self._sequential_lines(rows.start)
        try:
            for position, line in lines.upto(rows.stop):
                if position >= rows.start and line.strip():
                    yield self._json_record(position, line)
        finally:
            if lines is not self._stream:
                lines.close()

    def _sequential_lines(self, start: int) -> _LineStream:
        """A compressed file's lines from ``start``: where the last range left off when that
        is not past it, else from the beginning."""
        if self._stream is None or self._stream.position > start:
            if self._stream is not None:
                self._stream.close()
            stream = self._fs.open_input_stream(self._path, compression="detect")
            self._stream = _LineStream(io.BufferedReader(stream, _READ_BUFFER), 0)
        return self._stream

    def _json_record(self, position: int, line: bytes) -> Record:
        if position == 0 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM) :]  # Windows tools write one; JSON parsers refuse it
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return BadRecord(
                position, position + 1, None, f"not valid JSON: {exc}", BadCause.MALFORMED
            )
        if not isinstance(value, dict):
            return BadRecord(
                position,
                position + 1,
                None,
                f"a JSON {type(value).__name__}, not an object",
                BadCause.NOT_AN_OBJECT,
            )
        return self._from_mapping(value, position)

    # -- Parquet ------------------------------------------------------------------------

    def _parquet(self, rows: RowRange) -> Iterator[Record]:
        base = 0
        for path in parquet_files(self._fs, self._path):
            if base >= rows.stop:
                return
            parquet = pq.ParquetFile(self._fs.open_input_file(path))
            size = parquet.metadata.num_rows
            if base + size > rows.start:
                yield from self._parquet_file(parquet, path, base, rows)
            base += size

    def _parquet_file(
        self, parquet: pq.ParquetFile, path: str, base: int, rows: RowRange
    ) -> Iterator[Record]:
        columns = self._columns(parquet.schema_arrow.names, path)
        first = base
        for group in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if first < rows.stop and first + size > rows.start:
                batches = parquet.iter_batches(
                    _PARQUET_BATCH_ROWS, row_groups=[group], columns=columns
                )
                yield from self._table_rows(batches, first, rows)
            first += size

    def _table_rows(
        self, batches: Iterable[pa.RecordBatch], first: int, rows: RowRange
    ) -> Iterator[Record]:
        position = first
        for batch in batches:
            if position + batch.num_rows > rows.start and position < rows.stop:
                for offset, row in enumerate(batch.to_pylist()):
                    if position + offset in rows:
                        yield self._from_mapping(row, position + offset)
            position += batch.num_rows

    def _columns(self, names: Sequence[str], where: str) -> list[str]:
        """The columns to read for the fields: a field's own name when a column has it, else
        its first part (a struct column holding the rest of the path)."""
        columns = []
        for field in (self.source.text_field, self.source.id_field):
            if field is None:
                continue
            column = field if field in names else field.split(".", 1)[0]
            if column not in names:
                raise ConfigurationError(
                    f"{where} has no column {column!r} for {field!r} (columns: {', '.join(names)})"
                )
            if column not in columns:
                columns.append(column)
        return columns

    # -- CSV / TSV ----------------------------------------------------------------------

    def _csv(self, rows: RowRange) -> Iterator[Record]:
        unparsed: list[str] = []
        position = 0
        for batch in self._csv_batches(unparsed):
            for reason in unparsed:
                if position in rows:
                    yield BadRecord(position, position + 1, None, reason, BadCause.MALFORMED)
            unparsed.clear()
            if position >= rows.stop:
                return
            yield from self._table_rows([batch], position, rows)
            position += batch.num_rows
        for reason in unparsed:  # rows after the last good one
            if position in rows:
                yield BadRecord(position, position + 1, None, reason, BadCause.MALFORMED)

    def _csv_batches(self, unparsed: list[str]) -> Iterator[pa.RecordBatch]:
        """The CSV's batches; the rows that could not be parsed go to ``unparsed`` while the
        batch that follows them is read."""

        def skip_invalid(row: pacsv.InvalidRow) -> str:
            unparsed.append(
                f"{row.actual_columns} fields where the header has {row.expected_columns}: "
                f"{row.text[:_QUOTED]!r}"
            )
            return "skip"

        fields = [f for f in (self.source.text_field, self.source.id_field) if f is not None]
        stream = self._fs.open_input_stream(self._path, compression="detect")
        with stream:
            try:
                reader = pacsv.open_csv(
                    stream,
                    # One thread: bad rows must be seen in the order of the batches they precede.
                    read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=False),
                    parse_options=pacsv.ParseOptions(
                        delimiter="\t" if self.source.format == "tsv" else ",",
                        newlines_in_values=True,
                        invalid_row_handler=skip_invalid,
                    ),
                    convert_options=pacsv.ConvertOptions(
                        include_columns=fields,
                        column_types={self.source.text_field: pa.string()},
                        strings_can_be_null=False,
                    ),
                )
            except pa.ArrowInvalid as exc:
                raise ConfigurationError(f"cannot read {self.source.uri} as CSV: {exc}") from exc
            yield from reader

    # -- pickle -------------------------------------------------------------------------

    def _pickle(self, rows: RowRange) -> Iterator[Record]:
        if self._pickled is None:
            self._pickled = self._load_pickle()
        for position, key, item in self._pickled.items(rows):
            if isinstance(item, Mapping):
                yield self._from_mapping(item, position, key)
            elif key is not _POSITIONAL:
                yield self._with_id(key, position, item)
            elif self.source.id_field is None:
                yield FileRecord(position, position, item, position + 1)
            else:
                yield BadRecord(
                    position,
                    position + 1,
                    None,
                    f"a {type(item).__name__}, so no id field {self.source.id_field!r}",
                    BadCause.MISSING_ID,
                )

    def _load_pickle(self) -> _Pickled:
        size = self._fs.get_file_info(self._path).size or 0
        log.info(
            "loading %s whole (%.1f MB): a pickle cannot be streamed, so it is held in memory",
            self.source.uri,
            size / 1e6,
        )
        with self._fs.open_input_stream(self._path, compression="detect") as stream:
            try:
                value = pickle.load(io.BufferedReader(stream, _READ_BUFFER))
            except ModuleNotFoundError as exc:
                raise ConfigurationError(
                    f"cannot unpickle {self.source.uri}: it needs the module {exc.name!r}"
                    + (" (install embedder[pandas])" if exc.name == "pandas" else "")
                ) from exc
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
                raise ConfigurationError(f"cannot unpickle {self.source.uri}: {exc}") from exc
        return _Pickled.of(value, self.source)

    # -- shared -------------------------------------------------------------------------

    def _from_mapping(
        self, row: Mapping[str, Any], position: int, key: object = _POSITIONAL
    ) -> Record:
        text = get_path(row, self.source.text_field)
        text = None if text is MISSING else text
        if key is not _POSITIONAL:
            return self._with_id(key, position, text)
        if self.source.id_field is None:
            return FileRecord(position, position, text, position + 1)
        return self._with_id(get_path(row, self.source.id_field), position, text)

    def _with_id(self, value: object, position: int, text: object) -> Record:
        if value is MISSING or value is None:
            field = self.source.id_field
            return BadRecord(
                position, position + 1, None, f"no id in field {field!r}", BadCause.MISSING_ID
            )
        record_id = as_record_id(value)
        if record_id is None:
            return BadRecord(
                position,
                position + 1,
                None,
                f"id {value!r} is a {type(value).__name__}, not a string or a 64-bit integer",
                BadCause.BAD_ID,
            )
        return FileRecord(position, record_id, text, position + 1)


def as_record_id(value: object) -> RecordId | None:
    """A string or a 64-bit integer (a NumPy one from a DataFrame included) as an id; else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        # MongoDB's integers (and so an _id, and the order export follows) stop at int64.
        return number if -(2**63) <= number < 2**63 else None
    return None


def parquet_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """A Parquet file, or a dataset directory's files in path order (hidden ones left out)."""
    try:
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return [path]
        return sorted(pads.dataset(path, filesystem=fs, format="parquet").files)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot list the Parquet dataset {path}: {exc}") from exc


def _file_info(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    try:
        info = fs.get_file_info(path)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise ConfigurationError(f"no corpus at {uri}")
    return info


def is_compressed(path: str) -> bool:
    """Whether the name says the file is compressed (it is then read as a stream)."""
    return path.lower().endswith(_COMPRESSED)


def _bounded(file: pa.NativeFile, size: int) -> io.BufferedReader:
    """``size`` bytes of ``file`` from where it stands, buffered."""
    return io.BufferedReader(_Window(file, size), _READ_BUFFER)


class _Window(io.RawIOBase):
    """At most ``size`` bytes of a file, as a raw stream."""

    def __init__(self, file: pa.NativeFile, size: int) -> None:
        self._file = file
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        count = min(len(view), self._left)
        if count <= 0:
            return 0
        data = self._file.read(count)
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


class _LineStream:
    """Lines of a byte stream with the position of the next one."""

    def __init__(self, stream: io.BufferedReader, position: int) -> None:
        self._stream = stream
        self.position = position

    def upto(self, stop: int) -> Iterator[tuple[int, bytes]]:
        """Lines with their positions, up to (not including) position ``stop``."""
        while self.position < stop:
            line = self._stream.readline()
            if not line:
                return
            self.position += 1
            yield self.position - 1, line

    def close(self) -> None:
        self._stream.close()


Slicer = Callable[[int, int], Iterable[tuple[object, object]]]


class _Pickled:
    """An unpickled corpus: its (id or _POSITIONAL, item) pairs by position range."""

    def __init__(self, size: int, slicer: Slicer) -> None:
        self.size = size
        self._slicer = slicer

    @classmethod
    def of(cls, value: object, source: CorpusSource) -> _Pickled:
        if type(value).__module__.split(".", 1)[0] == "pandas":
            return _pandas(value, source)
        if isinstance(value, Mapping):
            column = value.get(source.text_field)
            if isinstance(column, Sequence) and not isinstance(column, str):
                return _columns(value, source)
            mapping = value
            return cls(
                len(mapping), lambda start, stop: itertools.islice(mapping.items(), start, stop)
            )
        if hasattr(value, "tolist"):  # a NumPy array of texts
            value = value.tolist()
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            items = value
            return cls(
                len(items), lambda start, stop: ((_POSITIONAL, i) for i in items[start:stop])
            )
        raise ConfigurationError(
            f"cannot read {source.uri}: the pickle holds a {type(value).__name__}; a list of "
            "texts or of dicts, a dict of id to text, a dict of columns or a pandas "
            "DataFrame or Series is needed"
        )

    def items(self, rows: RowRange) -> Iterator[tuple[int, object, object]]:
        for offset, (key, item) in enumerate(self._slicer(rows.start, min(rows.stop, self.size))):
            yield rows.start + offset, key, item


def _columns(value: Mapping[str, Any], source: CorpusSource) -> _Pickled:
    """A dict of equally long columns, row by row."""
    names = [n for n in (source.text_field, source.id_field) if n is not None]
    lengths = {len(value[n]) for n in names if n in value}
    if len(lengths) != 1:
        raise ConfigurationError(
            f"{source.uri}: the columns {', '.join(names)} are not all there or not equally long"
        )

    def rows(start: int, stop: int) -> Iterator[tuple[object, object]]:
        for i in range(start, stop):
            yield _POSITIONAL, {n: value[n][i] for n in names if n in value}

    return _Pickled(lengths.pop(), rows)


def _pandas(value: Any, source: CorpusSource) -> _Pickled:
    if not hasattr(value, "columns"):  # a Series: index to text
        return _Pickled(
            len(value), lambda start, stop: _frame_rows(value, value.index, start, stop)
        )
    columns = list(value.columns)
    if source.text_field not in columns:
        raise ConfigurationError(
            f"{source.uri}: the DataFrame has no column {source.text_field!r} "
            f"(columns: {', '.join(map(str, columns))})"
        )
    texts = value[source.text_field]
    ids: Any = None
    if source.id_field is not None:
        if source.id_field in columns:
            ids = value[source.id_field]
        elif source.id_field == value.index.name:
            ids = value.index
        else:
            raise ConfigurationError(
                f"{source.uri}: the DataFrame has no column or index named {source.id_field!r}"
            )
    return _Pickled(len(value), lambda start, stop: _frame_rows(texts, ids, start, stop))


def _frame_rows(texts: Any, ids: Any, start: int, stop: int) -> Iterator[tuple[object, object]]:
    """pandas values a slice at a time, a missing text (NaN, None) as None."""
    for first in range(start, stop, _PICKLE_SLICE):
        last = min(stop, first + _PICKLE_SLICE)
        chunk = texts.iloc[first:last].tolist()
        if ids is None:
            keys: list[object] = [_POSITIONAL] * len(chunk)
        else:  # a Series (by position) or an Index
            keys = (ids.iloc if hasattr(ids, "iloc") else ids)[first:last].tolist()
        for key, text in zip(keys, chunk, strict=True):
            missing = text is None or (isinstance(text, float) and math.isnan(text))
            yield key, None if missing else text
