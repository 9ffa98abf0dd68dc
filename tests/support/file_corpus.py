"""Small corpora in files, of every format the file source reads, with bad records of each
kind at known places, and what a run over them must leave behind."""

from __future__ import annotations

import gzip
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedder.files import RecordId

# Positions of the bad records in every corpus built here (those a format can hold).
MALFORMED = 3
MISSING_TEXT = 7
EMPTY_TEXT = 11
NOT_A_STRING = 13
DUPLICATE = 17  # has the id of position 2
MISSING_ID = 19


@dataclass
class FileCorpus:
    """A corpus on disk: the good records' texts by id and the bad ones' causes by position."""

    path: Path
    text_field: str
    id_field: str | None
    texts: dict[RecordId, str] = field(default_factory=dict)
    positions: dict[RecordId, int] = field(default_factory=dict)
    bad: dict[int, str] = field(default_factory=dict)  # position -> failures-file cause


def text_of(position: int) -> str:
    return f"record {position}: " + " ".join(f"w{(position * 7 + k) % 101}" for k in range(12))


def rows(count: int) -> list[dict[str, Any]]:
    return [{"id": f"doc-{i}", "text": text_of(i)} for i in range(count)]


def _good(corpus: FileCorpus, rows: list[dict[str, Any]], *, by_id: bool = True) -> FileCorpus:
    """The rows not bad, by id (or by position, for a corpus without ids)."""
    for position, row in enumerate(rows):
        if position not in corpus.bad:
            key = row["id"] if by_id else position
            corpus.texts[key] = row["text"]
            corpus.positions[key] = position
    return corpus


def jsonl(path: Path, count: int, *, compression: str | None = None) -> FileCorpus:
    """NDJSON with the text nested (``body.text``): every kind of bad record."""
    corpus = FileCorpus(path, "body.text", "meta.id")
    lines = []
    records = rows(count)
    for position, row in enumerate(records):
        record: dict[str, Any] = {"meta": {"id": row["id"]}, "body": {"text": row["text"]}}
        if position == MISSING_TEXT:
            record["body"] = {}
        elif position == EMPTY_TEXT:
            record["body"]["text"] = "  "
        elif position == NOT_A_STRING:
            record["body"]["text"] = 42
        elif position == DUPLICATE:
            record["meta"]["id"] = records[2]["id"]
        elif position == MISSING_ID:
            record["meta"] = {}
        line = json.dumps(record)
        if position == MALFORMED:
            line = line[:-3]
        lines.append(line)
    corpus.bad = {
        MALFORMED: "malformed",
        MISSING_TEXT: "text",
        EMPTY_TEXT: "text",
        NOT_A_STRING: "text",
        DUPLICATE: "duplicate_id",
        MISSING_ID: "missing_id",
    }
    data = ("\n".join(lines) + "\n").encode()
    if compression == "gzip":
        data = gzip.compress(data)
    if compression == "zstd":
        with pa.CompressedOutputStream(str(path), "zstd") as sink:
            sink.write(data)
    else:
        path.write_bytes(data)
    return _good(corpus, records)


def parquet_dataset(directory: Path, count: int, *, files: int = 3) -> FileCorpus:
    """A dataset directory of several files and small row groups, with nulls and an empty
    text, a duplicate and a missing id (a Parquet column holds one type)."""
    directory.mkdir(parents=True)
    records = rows(count)
    ids: list[str | None] = [r["id"] for r in records]
    texts: list[str | None] = [r["text"] for r in records]
    texts[MISSING_TEXT] = None
    texts[EMPTY_TEXT] = ""
    ids[DUPLICATE] = ids[2]
    ids[MISSING_ID] = None
    per_file = -(-count // files)
    for index in range(files):
        window = slice(index * per_file, (index + 1) * per_file)
        table = pa.table(
            {"id": ids[window], "text": texts[window], "n": list(range(count))[window]}
        )
        pq.write_table(table, directory / f"part-{index}.parquet", row_group_size=9)
    (directory / "_SUCCESS").write_text("")
    corpus = FileCorpus(directory, "text", "id")
    corpus.bad = {
        MISSING_TEXT: "text",
        EMPTY_TEXT: "text",
        DUPLICATE: "duplicate_id",
        MISSING_ID: "missing_id",
    }
    return _good(corpus, records)


def delimited(path: Path, count: int, *, delimiter: str = ",") -> FileCorpus:
    """CSV or TSV with quoted newlines in texts, a row of the wrong width (placed before the
    first row, whose position such a row takes), an empty text and a duplicate id."""
    records = rows(count)
    for row in records[::5]:
        row["text"] = row["text"] + "\nsecond line, with a comma"
    lines = [f"id{delimiter}text"]
    for position, row in enumerate(records):
        row_id = records[2]["id"] if position == DUPLICATE else row["id"]
        text = "" if position == EMPTY_TEXT else row["text"]
        quoted = '"' + text.replace('"', '""') + '"'
        lines.append(f"{row_id}{delimiter}{quoted}")
    lines.insert(1, delimiter.join(["broken", "row", "of", "four"]))
    path.write_text("\n".join(lines) + "\n")
    corpus = FileCorpus(path, "text", "id")
    corpus.bad = {EMPTY_TEXT: "text", DUPLICATE: "duplicate_id", 0: "malformed"}
    good = _good(corpus, records)
    # Position 0 is both a good row and where the unparsable row is reported.
    good.texts[records[0]["id"]] = records[0]["text"]
    good.positions[records[0]["id"]] = 0
    return good


def pickled(path: Path, shape: str, count: int) -> FileCorpus:
    """A pickle in one of the shapes people have: ``texts`` (a list of strings), ``dicts``,
    ``mapping`` (id -> text), ``columns`` or ``dataframe``."""
    records = rows(count)
    corpus = FileCorpus(path, "text", "id")
    value: Any
    if shape == "texts":
        corpus.id_field = None
        value = [r["text"] for r in records]
        value[EMPTY_TEXT] = ""
        corpus.bad = {EMPTY_TEXT: "text"}
        with path.open("wb") as sink:
            pickle.dump(value, sink)
        return _good(corpus, records, by_id=False)
    elif shape == "dicts":
        value = [dict(r) for r in records]
        value[NOT_A_STRING]["text"] = ["not", "a", "string"]
        del value[MISSING_TEXT]["text"]
        value[MISSING_ID]["id"] = 1.5
        corpus.bad = {NOT_A_STRING: "text", MISSING_TEXT: "text", MISSING_ID: "bad_id"}
    elif shape == "mapping":
        corpus.id_field = None  # the keys are the ids
        value = {r["id"]: r["text"] for r in records}
        value[records[EMPTY_TEXT]["id"]] = ""
        corpus.bad = {EMPTY_TEXT: "text"}
    elif shape == "columns":
        value = {"id": [r["id"] for r in records], "text": [r["text"] for r in records]}
        value["id"][DUPLICATE] = records[2]["id"]
        corpus.bad = {DUPLICATE: "duplicate_id"}
    elif shape == "dataframe":
        import pandas as pd

        frame = pd.DataFrame(records)
        frame.loc[MISSING_TEXT, "text"] = None
        value = frame
        corpus.bad = {MISSING_TEXT: "text"}
    else:
        raise ValueError(shape)
    with path.open("wb") as sink:
        pickle.dump(value, sink)
    return _good(corpus, records)
