"""Consolidating file-corpus outputs: one run's, or the parts of one corpus (``--part``) run
on clusters that share no storage, into one consolidated output.

Each output's shards go through the ordinary consolidator in turn (one output lease, the same
de-duplication and checks); the outputs must be of the same corpus and chunks (their plans
agree) and of distinct parts. The bad records of every output are gathered into one
``failures.jsonl`` beside the consolidated files, in corpus order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from embedder.errors import ConfigurationError, StorageError
from embedder.files.chunk_marks import Failure, done_chunks, read_failures
from embedder.files.layout import FilesOutput
from embedder.files.plan import ChunkPlan
from embedder.files.plan_store import load_plan
from embedder.storage import filesystems as storage
from embedder.storage.consolidate import ConsolidateSettings, ConsolidationReport, Consolidator

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.jsonl"


@dataclass(slots=True)
class PartsReport:
    """What consolidating file-corpus outputs did, and what is still missing."""

    runs: list[ConsolidationReport] = field(default_factory=list)
    failures: int = 0
    missing: list[str] = field(default_factory=list)  # chunks or parts not done

    def lines(self) -> list[str]:
        lines = [line for run in self.runs for line in run.lines()]
        lines.append(f"{self.failures} bad records listed in {FAILURES_FILE}")
        lines.extend(f"  not there yet: {what}" for what in self.missing)
        return lines

    @property
    def bad_shards(self) -> dict[str, str]:
        return {name: why for run in self.runs for name, why in run.bad_shards.items()}

    def as_dict(self) -> dict[str, object]:
        return {
            "runs": [r.as_dict() for r in self.runs],
            "failures": self.failures,
            "missing": self.missing,
        }


def find_outputs(uris: Sequence[str]) -> list[FilesOutput]:
    """The file-corpus outputs named, a parent standing for the outputs directly under it."""
    found: list[FilesOutput] = []
    for uri in uris:
        output = FilesOutput.open(uri, create=False)
        if output.is_output():
            found.append(output)
            continue
        children = [
            FilesOutput.open(f"{output.uri}/{info.base_name}", create=False)
            for info in _subdirectories(output)
        ]
        parts = [child for child in children if child.is_output()]
        if not parts:
            raise ConfigurationError(
                f"{uri} is not the output of embed-files, nor a directory holding such outputs"
            )
        found.extend(parts)
    return found


def default_consolidated(uris: Sequence[str]) -> str:
    """``<output>/consolidated`` for one output or one parent of parts."""
    if len(uris) != 1:
        raise ConfigurationError("several outputs given: name the --consolidated-dir")
    return f"{uris[0].rstrip('/')}/consolidated"


def consolidate_outputs(
    outputs: Sequence[FilesOutput], settings: ConsolidateSettings
) -> PartsReport:
    """Consolidate each output's shards into ``settings.output_uri``, then list the
    failures."""
    plans = check_outputs(outputs)
    report = PartsReport(missing=_missing(outputs, plans))
    for output in outputs:
        log.info("consolidating %s", output.shards_uri)
        run = dataclasses.replace(settings, shards_uri=output.shards_uri)
        report.runs.append(Consolidator(run).run())
    report.failures = _write_failures(outputs, settings)
    return report


def check_outputs(outputs: Sequence[FilesOutput]) -> list[ChunkPlan]:
    """The outputs' plans; refuses outputs of different corpora or chunks, or one part twice."""
    plans = [load_plan(o) for o in outputs]
    first = plans[0]
    parts: dict[int, str] = {}
    for output, plan in zip(outputs, plans, strict=True):
        problem = first.mismatch(plan, same_part=False)
        if problem is not None:
            raise ConfigurationError(
                f"{outputs[0].uri} and {output.uri} are not parts of one run ({problem})"
            )
        if plan.selection.part in parts:
            raise ConfigurationError(
                f"{parts[plan.selection.part]} and {output.uri} are both part "
                f"{plan.selection.part}/{plan.selection.parts}"
            )
        parts[plan.selection.part] = output.uri
    return plans


def _missing(outputs: Sequence[FilesOutput], plans: Sequence[ChunkPlan]) -> list[str]:
    missing = []
    for output, plan in zip(outputs, plans, strict=True):
        done = done_chunks(output)
        left = [c.name for c in plan.part_chunks() if c.name not in done]
        if left:
            missing.append(f"{output.uri}: {len(left)} chunks not done ({left[0]}, ...)")
    selection = plans[0].selection
    given = {p.selection.part for p in plans}
    missing.extend(
        f"part {part}/{selection.parts}"
        for part in range(1, selection.parts + 1)
        if part not in given
    )
    return missing


def _write_failures(outputs: Sequence[FilesOutput], settings: ConsolidateSettings) -> int:
    """The consolidated output's failures: those listed there already (parts consolidated
    earlier) and the outputs', one per record, in corpus order."""
    fs, root = storage.open_root(settings.output_uri, filesystem=settings.output_filesystem)
    path = f"{root}/{FAILURES_FILE}"
    try:
        earlier = storage.read_bytes(fs, path) if storage.exists(fs, path) else b""
        # One line per bad record: a record is its position and reason (two unparsable CSV
        # rows of one block share a position).
        known = {
            (f.position, f.reason): f
            for f in (Failure.from_line(x) for x in earlier.splitlines() if x.strip())
        }
        known.update(((f.position, f.reason), f) for o in outputs for f in read_failures(o))
        lines = b"".join(known[key].to_line() for key in sorted(known))
        storage.write_bytes_atomically(fs, path, lines)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc
    return len(known)


def _subdirectories(output: FilesOutput) -> list[pafs.FileInfo]:
    try:
        infos = output.fs.get_file_info(pafs.FileSelector(output.root, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot list {output.uri}: {exc}") from exc
    return sorted(
        (i for i in infos if i.type == pafs.FileType.Directory),
        key=lambda i: i.base_name,
    )
