"""Click parameter types for the values the commands take: sizes, concurrency, lists, JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from bson.errors import BSONError

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ByteSize(click.ParamType[int]):
    """'1G', '512MiB', '200MB' or a plain number of bytes (units are powers of 1024)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            size = value
        else:
            text = str(value).strip().upper().removesuffix("B").removesuffix("I")
            unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
            try:
                size = int(float(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit])
            except ValueError:
                self.fail(f"{value!r} is not a size such as 1G or 512M", param, ctx)
        if size < 0:
            self.fail(f"{value!r}: a size cannot be negative", param, ctx)
        return size


def size_text(size: int) -> str:
    """A size as the shortest text ``ByteSize`` reads back: 4G, 512M, 1000."""
    for unit, factor in sorted(_SIZE_UNITS.items(), key=lambda item: -item[1]):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return "0"


class Concurrency(click.ParamType[int | None]):
    """'auto' (None: adaptive) or a positive number of requests."""

    name = "auto|N"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or str(value).strip().lower() == "auto":
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)
        if number < 1:
            self.fail("must be at least 1", param, ctx)
        return number


class PositiveIntList(click.ParamType[tuple[int, ...]]):
    """A comma-separated list of positive numbers, such as 8,16,32."""

    name = "N,N,..."

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(int(x) for x in str(value).split(",") if x.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not numbers or min(numbers) < 1:
            self.fail("give positive numbers, such as 8,16,32", param, ctx)
        return numbers


class JsonObject(click.ParamType[dict[str, Any]]):
    """A JSON object, such as a MongoDB filter."""

    name = "json"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"not JSON: {exc}", param, ctx)
        if not isinstance(parsed, dict):
            self.fail("must be a JSON object", param, ctx)
        return parsed


class DocId(click.ParamType[list[Any]]):
    """A doc's id as typed (42, abc, {"$oid": ...}): every id it may mean, in order."""

    name = "id"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[Any]:
        if isinstance(value, list):
            return value
        # Imported here: it loads pyarrow's datasets (and pandas), which `embed` never needs.
        from embedder.ops.lineage import parse_doc_id

        try:
            return parse_doc_id(str(value))
        except BSONError as exc:  # extended JSON of a malformed value: {"$oid": "zzz"}
            self.fail(f"{value}: {exc}", param, ctx)


class WritableFile(click.ParamType[Path]):
    """A path to write a report to at the end: its directory is checked before any work, so
    a long run is not lost to a typo in a directory name."""

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value).expanduser().absolute()
        folder = path.parent
        if path.is_dir():
            self.fail(f"{path} is a directory; give a file name in it", param, ctx)
        if not folder.is_dir():
            self.fail(
                f"the directory {folder} does not exist; create it or choose another path",
                param,
                ctx,
            )
        if not os.access(folder, os.W_OK):
            self.fail(f"the directory {folder} is not writable; choose another path", param, ctx)
        return path


BYTE_SIZE = ByteSize()
CONCURRENCY = Concurrency()
POSITIVE_INT_LIST = PositiveIntList()
JSON_OBJECT = JsonObject()
DOC_ID = DocId()


class ProcessCount(click.ParamType[int]):
    """'auto' (the cores this process may use) or a positive number of processes."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = CONCURRENCY.convert(value, param, ctx)  # the same 'auto' or a number
        if number is None:
            from embedder.worker.processes import usable_cores

            return usable_cores()
        return number


PROCESS_COUNT = ProcessCount()

WRITABLE_FILE = WritableFile()
