"""A corpus in files, embedded through the one pipeline against real TEI-compatible servers on
loopback: every format with bad records of each kind, workers sharing a corpus while one is
killed again and again, parts merged by the consolidator, and samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from embedder.errors import ConfigurationError
from embedder.files import open_source
from embedder.files.consolidate_outputs import consolidate_outputs, find_outputs
from embedder.files.plan import Selection
from embedder.files.runner import FilesJob, run_embed_files
from embedder.files.status import collect
from embedder.fleet.routing import FleetSettings
from embedder.ids import decode_id
from embedder.storage.consolidate import ConsolidateSettings
from embedder.telemetry import Summary
from embedder.worker.pipeline import WorkerSettings
from tests.support import file_corpus
from tests.support.corpus import expected_vectors
from tests.support.file_corpus import FileCorpus
from tests.support.s3 import moto_s3
from tests.support.servers import ROOT, FaultTei, run_python
from tests.support.worker import wait_until

DIMENSION = 64  # tests.support.fault_tei's default


async def _embed(
    corpus: FileCorpus,
    tei: FaultTei,
    out: Path,
    *,
    selection: Selection | None = None,
    chunk_rows: int = 16,
    out_uri: str | None = None,
) -> Summary:
    """One embed-files worker in this process and event loop (into ``out``, or
    ``out_uri``)."""
    source = open_source(str(corpus.path), text_field=corpus.text_field, id_field=corpus.id_field)
    return await run_embed_files(
        FilesJob(
            source,
            out_uri or str(out),
            FleetSettings(urls=(tei.url + "/embed",), batch_size=8),
            selection=selection or Selection(),
            chunk_rows=chunk_rows,
            hot_dir=out.parent / "hot",
            worker=WorkerSettings(once=True, poll_interval_s=0.2),
            progress_bar=False,
        )
    )


def _rows(files: Sequence[Path]) -> dict[Any, np.ndarray]:
    """Rows by decoded id; fails if an id is there twice."""
    rows: dict[Any, np.ndarray] = {}
    for path in files:
        table = pq.read_table(path)
        kinds, vectors = table["_id_kind"].to_pylist(), table["embedding"].to_pylist()
        for text, kind, vector in zip(table["_id"].to_pylist(), kinds, vectors, strict=True):
            doc_id = decode_id(text, kind)
            assert doc_id not in rows, f"{doc_id!r} is in the output twice"
            rows[doc_id] = np.asarray(vector, np.float32)
    return rows


def _shards(out: Path) -> list[Path]:
    return sorted(p for p in (out / "shards").glob("*.parquet") if not p.name.startswith("."))


def _failures(out: Path) -> dict[int, str]:
    lines = [
        orjson.loads(line)
        for path in sorted((out / "_files" / "failures").glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]
    return {line["position"]: line["cause"] for line in lines}


def _assert_exact(rows: dict[Any, np.ndarray], texts: dict[Any, str]) -> None:
    """Every good record once, with the vector its text gets from the hash model."""
    assert set(rows) == set(texts)
    ids = list(texts)
    expected = expected_vectors([texts[i] for i in ids], DIMENSION)
    np.testing.assert_allclose(np.stack([rows[i] for i in ids]), expected, rtol=1e-5, atol=1e-6)


FORMATS = {
    "jsonl": lambda d: file_corpus.jsonl(d / "c.jsonl", 70),
    "jsonl.gz": lambda d: file_corpus.jsonl(d / "c.jsonl.gz", 70, compression="gzip"),
    "ndjson.zst": lambda d: file_corpus.jsonl(d / "c.ndjson.zst", 70, compression="zstd"),
    "parquet dataset": lambda d: file_corpus.parquet_dataset(d / "dataset", 70),
    "csv": lambda d: file_corpus.delimited(d / "c.csv", 70),
    "tsv": lambda d: file_corpus.delimited(d / "c.tsv", 70, delimiter="\t"),
    "pickled dicts": lambda d: file_corpus.pickled(d / "c.pkl", "dicts", 70),
    "pickled texts": lambda d: file_corpus.pickled(d / "c.pickle", "texts", 70),
    "pickled DataFrame": lambda d: file_corpus.pickled(d / "c.pkl", "dataframe", 70),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_every_format_with_bad_records(tmp_path: Path, tei: FaultTei, fmt: str) -> None:
    """Good records embedded once each, with their own vectors; every bad record in the
    failures file with its cause, counted in the summary; a second run finds nothing to do."""
    corpus = FORMATS[fmt](tmp_path)
    out = tmp_path / "out"
    summary = await _embed(corpus, tei, out)
    _assert_exact(_rows(_shards(out)), corpus.texts)
    assert _failures(out) == corpus.bad
    assert (summary.embedded, summary.failed) == (len(corpus.texts), len(corpus.bad))
    status = collect(str(out))
    assert status.complete
    assert (status.embedded, status.failed) == (len(corpus.texts), len(corpus.bad))
    again = await _embed(corpus, tei, out)
    assert (again.claimed, again.embedded) == (0, 0)


async def test_sample_and_limit_take_their_rows_only(tmp_path: Path, tei: FaultTei) -> None:
    corpus = file_corpus.jsonl(tmp_path / "c.jsonl", 80)
    limited = tmp_path / "limit"
    await _embed(corpus, tei, limited, selection=Selection(limit=30), chunk_rows=8)
    first = {i: t for i, t in corpus.texts.items() if corpus.positions[i] < 30}
    _assert_exact(_rows(_shards(limited)), first)
    assert _failures(limited) == {p: c for p, c in corpus.bad.items() if p < 30}

    sampled = tmp_path / "sample"
    await _embed(corpus, tei, sampled, selection=Selection(sample=25, seed=4), chunk_rows=8)
    rows = _rows(_shards(sampled))
    positions = {corpus.positions[i] for i in rows} | set(_failures(sampled))
    assert len(positions) == 25
    _assert_exact(rows, {i: corpus.texts[i] for i in rows})

    # A full run into a sample's output is refused, naming the difference.
    with pytest.raises(ConfigurationError, match="sample 25 seed 4"):
        await _embed(corpus, tei, sampled, chunk_rows=8)


async def test_parts_into_separate_outputs_are_merged(tmp_path: Path, tei: FaultTei) -> None:
    corpus = file_corpus.jsonl(tmp_path / "c.jsonl.gz", 90, compression="gzip")
    parts = tmp_path / "parts"
    for part in (1, 2):
        await _embed(corpus, tei, parts / f"part-{part}", selection=Selection(part=part, parts=2))
    halves = [_rows(_shards(parts / f"part-{p}")) for p in (1, 2)]
    assert halves[0] and halves[1] and not set(halves[0]) & set(halves[1])

    merged = tmp_path / "merged"
    only_one = _consolidate(
        "--output-dir", str(parts / "part-1"), "--consolidated-dir", str(merged)
    )
    assert "not there yet: part 2/2" in only_one.stderr
    done = _consolidate("--output-dir", str(parts), "--consolidated-dir", str(merged))
    assert done.returncode == 0, done.stderr
    _assert_exact(_rows(sorted(merged.glob("*.parquet"))), corpus.texts)
    listed = [json.loads(x) for x in (merged / "failures.jsonl").read_text().splitlines()]
    assert {x["position"]: x["cause"] for x in listed} == corpus.bad


def _consolidate(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python(["-m", "embedder.cli", "consolidate", *args], timeout=120)


class _Workers:
    """embed-files worker processes on one corpus and output."""

    def __init__(self, corpus: FileCorpus, root: Path) -> None:
        self.corpus, self.root = corpus, root
        self.out = root / "out"
        self.started = 0

    def start(self, name: str, tei: FaultTei) -> subprocess.Popen[bytes]:
        self.started += 1
        log = (self.root / f"{name}-{self.started}.log").open("wb")
        args = [
            "-m",
            "embedder.cli",
            "embed-files",
            "--input",
            str(self.corpus.path),
            "--text-field",
            self.corpus.text_field,
            "--id-field",
            str(self.corpus.id_field),
            "--output-dir",
            str(self.out),
            "--hot-dir",
            str(self.root / "hot"),
            "--chunk-rows",
            "12",
            "--tei-urls",
            tei.url,
            "--batch-size",
            "4",
            # One request in flight: a worker claims little ahead of what it embeds, so
            # held requests do not let one worker lease every chunk.
            "--concurrency",
            "1",
            "--lease-ttl",
            "3",
            "--poll-interval",
            "0.2",
            "--summary-json",
            str(self.root / f"{name}-{self.started}.json"),
        ]
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.root.glob("*.log")))

    def summaries(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in self.root.glob("*.json")]

    def holds_a_chunk(self, pid: int) -> bool:
        """A chunk not done is leased to ``pid``."""
        try:
            status = collect(str(self.out))
        except (ConfigurationError, FileNotFoundError):
            return False  # not planned yet
        return any(c.pid == pid for c in status.leased)


async def _kill_while_holding_a_chunk(
    workers: _Workers, victim: subprocess.Popen[bytes], tei: FaultTei
) -> None:
    """SIGKILL ``victim`` while it holds a chunk that cannot finish: once it works (its
    start-up probe answered), its server holds every request until the kill."""
    await wait_until(lambda: workers.holds_a_chunk(victim.pid), what="the victim at work")
    tei.set_faults(hold=True)
    await wait_until(
        lambda: victim.poll() is None and workers.holds_a_chunk(victim.pid),
        what="the victim holding a chunk",
    )
    leased = collect(str(workers.out)).leased
    assert any(c.pid == victim.pid and c.host for c in leased), leased
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    tei.set_faults()


async def test_workers_share_a_corpus_while_one_is_killed_again_and_again(
    tmp_path: Path, tei_factory: Callable[..., FaultTei]
) -> None:
    """Three processes on one corpus; one is SIGKILLed three times while it holds a chunk
    (its server holding its requests, so the chunk cannot finish first) and restarted. The
    others' server holds their requests meanwhile, so work is left for each restart however
    slowly it starts. The killed chunks are taken over, status names who holds what, and the
    consolidated output holds every good record exactly once with its own vector."""
    corpus = file_corpus.jsonl(tmp_path / "c.jsonl", 480)
    theirs, its = tei_factory(), tei_factory()
    workers = _Workers(corpus, tmp_path)
    steady = [workers.start("steady-a", theirs), workers.start("steady-b", theirs)]
    victim = workers.start("victim", its)
    try:
        await wait_until(lambda: any(workers.holds_a_chunk(p.pid) for p in steady), what="work")
        theirs.set_faults(hold=True)
        for _ in range(3):
            await _kill_while_holding_a_chunk(workers, victim, its)
            victim = workers.start("victim", its)
        theirs.set_faults()
        codes = [p.wait(180) for p in [*steady, victim]]
        assert codes == [0, 0, 0], workers.logs()
    finally:
        for proc in [*steady, victim]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # Each kill left a lease record unreleased, taken over by the next to claim its chunk
    # (a killed incarnation among them, whose summary is never written: hence the logs).
    assert workers.logs().count("took over the lease of chunk-") >= 3, workers.logs()
    assert sum(s["leases_taken_over"] for s in workers.summaries()) >= 1
    status = collect(str(workers.out))
    assert status.complete and status.failed == len(corpus.bad)

    consolidated = tmp_path / "consolidated"
    done = _consolidate("--output-dir", str(workers.out), "--consolidated-dir", str(consolidated))
    assert done.returncode == 0, done.stderr
    _assert_exact(_rows(sorted(consolidated.glob("*.parquet"))), corpus.texts)
    shown = run_python(["-m", "embedder.cli", "status", "--output-dir", str(workers.out)])
    assert "40 done, 0 leased, 0 pending of 40" in shown.stdout, shown.stdout + shown.stderr


async def test_an_s3_output(tmp_path: Path, tei: FaultTei, monkeypatch: pytest.MonkeyPatch) -> None:
    """On s3:// (moto's server) chunks are leased by conditional puts (If-None-Match: *),
    shards, failures and marks are objects, status reads them, and the parts consolidate."""
    corpus = file_corpus.parquet_dataset(tmp_path / "dataset", 60)
    with moto_s3(monkeypatch) as s3:
        summary = await _embed(
            corpus, tei, tmp_path / "unused", chunk_rows=20, out_uri="s3://bucket/out"
        )
        assert (summary.embedded, summary.failed) == (len(corpus.texts), len(corpus.bad))
        status = collect("s3://bucket/out")
        assert status.complete and status.chunks == 3  # a file of 20 rows each
        leases = s3.get_file_info(pafs.FileSelector("bucket/out/_files/leases", recursive=True))
        assert sum(i.base_name.endswith(".json") for i in leases) == 3
        report = consolidate_outputs(
            find_outputs(["s3://bucket/out"]),
            ConsolidateSettings("s3://bucket/out/shards", str(tmp_path / "consolidated")),
        )
        assert not report.missing
    _assert_exact(_rows(sorted((tmp_path / "consolidated").glob("*.parquet"))), corpus.texts)
