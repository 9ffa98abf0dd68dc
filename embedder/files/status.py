"""``embedder status --output-dir``: a file corpus's progress, read from its output alone.

Chunks done (their marks), leased (who holds each: host, pid, since when), pending; rows
embedded and failed; the rate over the last minutes and the ETA. Anything that sees the output
(another host on the shared filesystem, a laptop with the bucket's credentials) can ask.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from embedder.files.chunk_marks import ChunkDone, read_done
from embedder.files.file_queue import chunk_holder
from embedder.files.layout import FilesOutput
from embedder.files.plan_store import load_plan

RATE_WINDOW_S = 600.0  # the rate is that of the chunks finished in the last ten minutes


@dataclass(frozen=True, slots=True)
class LeasedChunk:
    chunk: str
    rows: int
    host: str
    pid: int
    since: str
    expires_at: float


@dataclass(slots=True)
class FilesStatus:
    output: str
    corpus: str
    selection: str
    chunks: int
    done: int
    pending: int
    rows: int
    rows_done: int
    embedded: int
    failed: int
    leased: list[LeasedChunk] = field(default_factory=list)
    rate_rows_per_s: float | None = None
    eta_s: float | None = None

    @property
    def complete(self) -> bool:
        return self.done == self.chunks

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}

    def lines(self) -> list[str]:
        rate = "-" if self.rate_rows_per_s is None else f"{self.rate_rows_per_s:,.1f} rows/s"
        eta = "-" if self.eta_s is None else _duration(self.eta_s)
        lines = [
            f"{self.output}: {self.corpus} ({self.selection})",
            f"chunks: {self.done} done, {len(self.leased)} leased, {self.pending} pending "
            f"of {self.chunks}",
            f"rows: {self.rows_done:,} of {self.rows:,} done ({self.embedded:,} embedded, "
            f"{self.failed:,} failed); rate {rate}; ETA {eta}",
        ]
        if self.failed:
            lines.append(f"failures: {self.output}/_files/failures/*.jsonl")
        lines.extend(
            f"  {c.chunk} ({c.rows} rows): host {c.host}, pid {c.pid}, since {c.since}"
            for c in self.leased
        )
        if self.complete:
            lines.append("complete: consolidate with `embedder consolidate --output-dir ...`")
        return lines


def collect(output_uri: str, *, now: float | None = None) -> FilesStatus:
    output = FilesOutput.open(output_uri, create=False)
    plan = load_plan(output)
    chunks = plan.part_chunks()
    names = {c.name for c in chunks}
    marks = {m.chunk: m for m in read_done(output) if m.chunk in names}
    at = time.time() if now is None else now
    leased = []
    for chunk in chunks:
        if chunk.name in marks:
            continue
        holder = chunk_holder(output, chunk.name)
        if holder is not None:
            leased.append(
                LeasedChunk(
                    chunk.name, chunk.rows, holder.host, holder.pid, holder.since, holder.expires_at
                )
            )
    done_rows = sum(c.rows for c in chunks if c.name in marks)
    rows = sum(c.rows for c in chunks)
    rate = _rate(list(marks.values()), at)
    return FilesStatus(
        output=output_uri,
        corpus=plan.source.uri,
        selection=plan.selection.describe(),
        chunks=len(chunks),
        done=len(marks),
        pending=len(chunks) - len(marks) - len(leased),
        rows=rows,
        rows_done=done_rows,
        embedded=sum(m.embedded for m in marks.values()),
        failed=sum(m.failed for m in marks.values()),
        leased=leased,
        rate_rows_per_s=rate,
        eta_s=(rows - done_rows) / rate if rate and rows > done_rows else None,
    )


def _rate(marks: list[ChunkDone], now: float) -> float | None:
    """Rows per second of the chunks finished within the window, from the first of them
    claimed to the last finished."""
    recent = [m for m in marks if m.finished_at >= now - RATE_WINDOW_S]
    if not recent:
        return None
    span = max(m.finished_at for m in recent) - min(m.claimed_at for m in recent)
    rows = sum(m.embedded + m.failed for m in recent)
    return rows / span if span > 0 else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
