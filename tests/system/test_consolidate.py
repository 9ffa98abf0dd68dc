"""The consolidator: de-duplication, crash safety, damaged shards, readers, verification."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedder.errors import ConfigurationError
from embedder.identity import text_hash
from embedder.ids import decode_id
from embedder.queue.spec import CONTROL_COLLECTION as CONTROL
from embedder.queue.spec import DEFAULT_TARGET_FIELD as DEFAULT_TARGET
from embedder.queue.spec import QueueSpec
from embedder.storage import manifest as mf
from embedder.storage.consolidate import ConsolidateSettings, Consolidator
from embedder.storage.output_lease import LEASE_DIR, Holder, LeaseHeld, LeaseLost, OutputLease
from embedder.storage.schema import ShardMetadata
from embedder.storage.shards import ShardSettings, ShardWriter
from tests.support import corpus as corpora
from tests.support.s3 import moto_s3
from tests.support.servers import ROOT, run_python
from tests.support.worker import Workspace, marks, seed

DIM = 16
LEASE_HELD_EXIT = 4  # `embedder consolidate` when another consolidator holds the output
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def vectors_for(ids: list[int], version: int) -> np.ndarray:
    """Unit vectors that encode (id, version), so a test can tell which copy survived."""
    out = np.stack([np.random.default_rng([version, i]).standard_normal(DIM) for i in ids]).astype(
        np.float32
    )
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def hashes(ids: list[int]) -> list[bytes]:
    return [text_hash(f"text {i}") for i in ids]


def write_shard(shards: Path, ids: list[int], version: int, hot: Path | None = None) -> str:
    settings = ShardSettings(
        cold_uri=str(shards), hot_dir=hot or shards.parent / "hot", max_rows=10**9
    )
    writer = ShardWriter(
        settings,
        owner=uuid.uuid4().hex,
        dimension=DIM,
        metadata=ShardMetadata(model_id="test/model", dimension=DIM, normalize=True),
    )
    writer.append(ids, vectors_for(ids, version), T0 + dt.timedelta(minutes=version), hashes(ids))
    receipt = writer.roll()
    assert receipt is not None
    return receipt.name


def output_rows(out: Path) -> dict[str, np.ndarray]:
    manifest = mf.load(*_local(out))
    tables = [pq.read_table(out / f.name) for f in manifest.files]
    assert {p.name for p in out.glob("*.parquet")} == {f.name for f in manifest.files}
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    ids = table["_id"].to_pylist()
    assert len(ids) == len(set(ids)), "an id appears twice in the output"
    return dict(zip(ids, np.stack(table["embedding"].to_numpy(zero_copy_only=False)), strict=True))


def _local(path: Path) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem(), str(path)


def survivor_version(vector: np.ndarray, doc_id: int) -> int:
    for version in range(10):
        expected = vectors_for([doc_id], version)[0]
        if np.allclose(vector, expected, atol=1e-6):
            return version
    raise AssertionError(f"vector of {doc_id} matches no version")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "shards", tmp_path / "consolidated"


def settings(shards: Path, out: Path, **extra: Any) -> ConsolidateSettings:
    return ConsolidateSettings(shards_uri=str(shards), output_uri=str(out), **extra)


def test_duplicates_within_and_across_shards_and_runs(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, list(range(100)), version=1)
    write_shard(shards, list(range(50, 150)), version=2)
    write_shard(shards, [5, 5, 7], version=3)  # a duplicate inside one shard, and newer

    first = Consolidator(settings(shards, out)).run()

    assert first.rows_in == 203 and first.duplicates_dropped == 53 and first.rows_out == 150
    rows = output_rows(out)
    assert set(rows) == {str(i) for i in range(150)}
    assert survivor_version(rows["20"], 20) == 1
    assert survivor_version(rows["60"], 60) == 2
    assert survivor_version(rows["5"], 5) == 3 and survivor_version(rows["7"], 7) == 3
    assert not list(shards.glob("*.parquet")), "merged shards should be retired"

    write_shard(shards, list(range(140, 160)), version=4)  # newer than rows already consolidated
    write_shard(shards, [0], version=0)  # older than the consolidated copy: must lose
    second = Consolidator(settings(shards, out)).run()

    rows = output_rows(out)
    assert set(rows) == {str(i) for i in range(160)}
    assert survivor_version(rows["145"], 145) == 4 and survivor_version(rows["0"], 0) == 1
    assert second.rewritten, "the output file holding the older copies should be rewritten"
    manifest = mf.load(*_local(out))
    assert (
        manifest.total_rows == 160
        and manifest.dimension == DIM
        and manifest.model_id == "test/model"
    )
    assert len(manifest.runs) == 2 and all(len(f.sha256) == 64 for f in manifest.files)


def test_output_files_respect_the_target_size(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    for start in range(0, 100_000, 10_000):
        write_shard(shards, list(range(start, start + 10_000)), version=1)
    report = Consolidator(settings(shards, out, target_file_bytes=1 << 20)).run()
    assert report.rows_out == 100_000
    sizes = [f.bytes for f in report.files]
    assert len(sizes) >= 5
    assert all(0.7 * (1 << 20) < size < 1.3 * (1 << 20) for size in sizes[:-1]), sizes


def test_output_reads_back_in_pyarrow_and_duckdb(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, list(range(300)), version=1)
    Consolidator(settings(shards, out)).run()

    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert table.num_rows == 300
    con = duckdb.connect()
    count, shortest, longest = con.execute(
        f"SELECT count(*), min(len(embedding)), max(len(embedding)) FROM read_parquet('{out}/*.parquet')"
    ).fetchone() or (0, 0, 0)
    assert (count, shortest, longest) == (300, DIM, DIM)
    # Parquet has no fixed-size list: DuckDB sees FLOAT[] and casts to its array type cleanly.
    kind = con.execute(
        f"SELECT typeof(embedding::FLOAT[{DIM}]) FROM read_parquet('{out}/*.parquet') LIMIT 1"
    ).fetchone()
    assert kind == (f"FLOAT[{DIM}]",)


def test_damaged_shards_are_reported_by_name_and_left_in_place(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    good = write_shard(shards, list(range(100)), version=1)
    truncated = write_shard(shards, list(range(100, 200)), version=1)
    corrupted = write_shard(shards, list(range(200, 300)), version=1)
    data = (shards / truncated).read_bytes()
    (shards / truncated).write_bytes(data[: len(data) // 2])
    raw = bytearray((shards / corrupted).read_bytes())
    raw[200:4200] = bytes(4000)  # inside the vector pages, footer intact
    (shards / corrupted).write_bytes(bytes(raw))

    report = Consolidator(settings(shards, out)).run()

    assert set(report.bad_shards) == {truncated, corrupted}
    assert report.sources == [good]
    assert set(output_rows(out)) == {str(i) for i in range(100)}
    assert (shards / truncated).exists() and (shards / corrupted).exists()
    assert not (shards / good).exists()


def test_shards_being_written_are_never_read(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, [1, 2, 3], version=1)
    (shards / ".shard-in-progress.parquet.tmp").write_bytes(b"PAR1 half written")
    (shards / ".hidden.parquet").write_bytes(b"not yet")
    report = Consolidator(settings(shards, out)).run()
    assert report.rows_out == 3 and not report.bad_shards
    assert (shards / ".shard-in-progress.parquet.tmp").exists() and (
        shards / ".hidden.parquet"
    ).exists()


def test_merged_shards_can_be_moved_aside(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    name = write_shard(shards, [1, 2], version=1)
    Consolidator(settings(shards, out, retire="move")).run()
    assert (shards / ".retired" / name).exists() and not (shards / name).exists()


@pytest.mark.parametrize(
    "point",
    [
        "consolidate.mid-copy",
        "consolidate.before-commit",
        "consolidate.after-commit-record",
        "consolidate.mid-publish",
        "consolidate.before-manifest",
        "consolidate.after-manifest",
        "consolidate.mid-retire",
    ],
)
def test_a_kill_at_any_point_then_a_rerun_gives_the_same_output(tmp_path: Path, point: str) -> None:
    reference_shards, reference_out = tmp_path / "ref-shards", tmp_path / "ref-out"
    shards, out = tmp_path / "shards", tmp_path / "out"
    for target in (reference_shards, shards):
        write_shard(target, list(range(0, 400)), version=1, hot=tmp_path / "hot")
        write_shard(target, list(range(300, 700)), version=2, hot=tmp_path / "hot")
    # A first consolidation, so the killed run also rewrites earlier output.
    for pair in ((reference_shards, reference_out), (shards, out)):
        _consolidate_cli(*pair)
        write_shard(pair[0], list(range(650, 900)), version=3, hot=tmp_path / "hot")
        write_shard(pair[0], list(range(850, 1000)), version=4, hot=tmp_path / "hot")
    _consolidate_cli(reference_shards, reference_out)

    killed = _consolidate_cli(shards, out, env={"EMBEDDER_FAILPOINT": point}, target_size="16K")
    assert killed.returncode == -9, killed.stderr
    manifest = mf.load(*_local(out))
    missing = [f.name for f in manifest.files if not (out / f.name).exists()]
    assert not missing, f"the manifest names deleted files after a kill at {point}"
    rerun = _consolidate_cli(shards, out)
    assert rerun.returncode == 0, rerun.stderr

    expected = output_rows(reference_out)
    got = output_rows(out)
    assert sorted(got) == sorted(expected) == sorted(str(i) for i in range(1000))
    for doc_id, vector in expected.items():
        np.testing.assert_array_equal(got[doc_id], vector)
    assert not list(shards.glob("*.parquet")), (
        "every merged shard should be retired after the rerun"
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")], (
        "staging or commit files were left"
    )


def _consolidate_args(shards: Path, out: Path, target_size: str = "1G") -> list[str]:
    return [
        sys.executable,
        "consolidate_embeddings.py",
        "--shards-dir",
        str(shards),
        "--consolidated-dir",
        str(out),
        "--target-file-size",
        target_size,
    ]


def _consolidate_cli(
    shards: Path, out: Path, env: dict[str, str] | None = None, target_size: str = "1G"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _consolidate_args(shards, out, target_size),
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_consolidated_dir_must_differ_from_the_shards_dir(tmp_path: Path) -> None:
    from embedder.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        ConsolidateSettings(shards_uri=str(tmp_path), output_uri=str(tmp_path) + "/")


def test_a_shard_of_another_model_is_left_in_place(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, [1], version=1)
    Consolidator(settings(shards, out)).run()
    other = ShardWriter(
        ShardSettings(cold_uri=str(shards), hot_dir=shards.parent / "hot"),
        owner="x" * 32,
        dimension=DIM,
        metadata=ShardMetadata(model_id="other/model", normalize=True),
    )
    other.append([2], vectors_for([2], 1), T0, hashes([2]))
    receipt = other.roll()
    assert receipt is not None
    report = Consolidator(settings(shards, out)).run()
    assert "other/model" in report.bad_shards[receipt.name]
    shutil.rmtree(shards.parent / "hot", ignore_errors=True)


def test_object_store_paths_through_pyarrow_fs(tmp_path: Path) -> None:
    """The same code on a non-local pyarrow filesystem (in memory here; S3 and GCS alike):
    shards are uploaded whole, and the consolidator commits without renames on disk."""
    import pyarrow.fs as pafs

    bucket = pafs._MockFileSystem()
    shard_settings = ShardSettings(
        cold_uri="mock:///bucket/shards", hot_dir=tmp_path / "hot", filesystem=bucket
    )
    for version, ids in ((1, list(range(100))), (2, list(range(50, 120)))):
        writer = ShardWriter(
            shard_settings,
            owner=uuid.uuid4().hex,
            dimension=DIM,
            metadata=ShardMetadata(model_id="test/model", normalize=True),
        )
        writer.append(
            ids, vectors_for(ids, version), T0 + dt.timedelta(minutes=version), hashes(ids)
        )
        assert writer.roll() is not None
    assert len(bucket.get_file_info(pafs.FileSelector("bucket/shards"))) == 2

    report = Consolidator(
        ConsolidateSettings(
            shards_uri="mock:///bucket/shards",
            output_uri="mock:///bucket/consolidated",
            shards_filesystem=bucket,
            output_filesystem=bucket,
            sole_consolidator=True,  # no conditional create on this store
        )
    ).run()

    assert report.rows_out == 120 and report.duplicates_dropped == 50
    manifest = mf.load(bucket, "bucket/consolidated")
    tables = [
        pq.read_table(f"bucket/consolidated/{f.name}", filesystem=bucket) for f in manifest.files
    ]
    ids = pa.concat_tables(tables)["_id"].to_pylist()
    assert sorted(ids, key=int) == [str(i) for i in range(120)]
    assert not [
        i
        for i in bucket.get_file_info(pafs.FileSelector("bucket/shards"))
        if i.base_name.endswith(".parquet")
    ]


def test_watch_mode_consolidates_new_shards_until_told_to_stop(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, list(range(50)), version=1)
    args = [*_consolidate_args(shards, out), "--watch", "--interval", "0.3"]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_until(lambda: mf.load(*_local(out)).total_rows == 50, proc)
        write_shard(shards, list(range(40, 90)), version=2)  # arrives while the watcher runs
        _wait_until(lambda: mf.load(*_local(out)).total_rows == 90, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    rows = output_rows(out)
    assert len(rows) == 90 and survivor_version(rows["45"], 45) == 2


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1])
        try:
            if condition():
                return
        except (OSError, ValueError):  # the manifest may be mid-replace
            pass
        time.sleep(0.05)
    raise AssertionError("the watcher did not consolidate in time")


# --- one consolidator at a time (issue 12, case 1) ------------------------------------------


def test_two_consolidators_at_once_while_shards_arrive(tmp_path: Path) -> None:
    """Rounds of two consolidator processes started together while shards keep arriving:
    every run either commits or steps aside naming the holder; then one more run succeeds
    and the manifest reaches every id exactly once, with nothing outside it."""
    shards, out, hot = tmp_path / "shards", tmp_path / "out", tmp_path / "hot"
    write_shard(shards, list(range(100)), version=1, hot=hot)
    written = {str(i) for i in range(100)}
    stop = threading.Event()

    def keep_writing() -> None:
        version = 2
        while not stop.is_set():
            start = (version * 37) % 500
            ids = list(range(start, start + 40))
            write_shard(shards, ids, version=version % 10, hot=hot)
            written.update(str(i) for i in ids)
            version += 1
            stop.wait(0.02)  # a throttle, so rounds see a few shards each

    writer = threading.Thread(target=keep_writing)
    writer.start()
    outcomes: list[tuple[int, str]] = []
    try:
        for _ in range(8):
            pair = [
                subprocess.Popen(
                    _consolidate_args(shards, out, "64K"),
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(2)
            ]
            for proc in pair:
                _, stderr = proc.communicate(timeout=120)
                outcomes.append((proc.returncode, stderr))
    finally:
        stop.set()
        writer.join()
    for code, stderr in outcomes:
        assert code in (0, LEASE_HELD_EXIT), stderr
        if code == LEASE_HELD_EXIT:
            last = stderr.strip().splitlines()[-1]
            assert "held by" in last and "pid" in last and "since" in last, last
    assert any(code == 0 for code, _ in outcomes)

    final = _consolidate_cli(shards, out)
    assert final.returncode == 0, final.stderr
    rows = output_rows(out)  # every output file is in the manifest, every id once
    assert set(rows) == written
    assert not [p for p in out.iterdir() if p.name.startswith((".commit-", ".staging-"))]
    assert not list(shards.glob("*.parquet"))


def _hold_lease(out: Path, *, host: str, expires_in_s: float) -> Path:
    """A lease on ``out`` as another consolidator would have written it."""
    lease_dir = out / LEASE_DIR
    lease_dir.mkdir(parents=True, exist_ok=True)
    holder = Holder(
        token="t" * 32,
        generation=1,
        host=host,
        pid=4242,
        since="2026-01-01T00:00:00+00:00",
        expires_at=time.time() + expires_in_s,
    )
    path = lease_dir / holder.file_name
    path.write_bytes(holder.to_bytes())
    return path


def test_a_second_consolidator_exits_naming_the_holder(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, [1, 2, 3], version=1)
    _hold_lease(out, host="other-host", expires_in_s=600)

    refused = _consolidate_cli(shards, out)

    assert refused.returncode == LEASE_HELD_EXIT, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "other-host" in line and "4242" in line and "2026-01-01T00:00:00" in line, line
    assert (shards / next(iter(p.name for p in shards.glob("*.parquet")))).exists()
    assert not mf.load(*_local(out)).files


def test_an_expired_lease_is_taken_over(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, [1, 2, 3], version=1)
    stale = _hold_lease(out, host="crashed-host", expires_in_s=-1)

    done = _consolidate_cli(shards, out)

    assert done.returncode == 0, done.stderr
    assert "crashed-host" in done.stderr  # the takeover is logged
    assert set(output_rows(out)) == {"1", "2", "3"}
    assert not stale.exists()


def test_watch_mode_waits_for_the_holder(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    write_shard(shards, list(range(20)), version=1)
    held = _hold_lease(out, host="other-host", expires_in_s=600)
    args = [*_consolidate_args(shards, out), "--watch", "--interval", "0.3"]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # It says who holds the output and keeps waiting; nothing is committed meanwhile.
        log_lines: list[str] = []
        assert proc.stderr is not None
        _wait_until(lambda: "held by" in _read_line(proc, log_lines), proc)
        assert not mf.load(*_local(out)).files
        held.unlink()
        _wait_until(lambda: mf.load(*_local(out)).total_rows == 20, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def _read_line(proc: subprocess.Popen[str], into: list[str]) -> str:
    assert proc.stderr is not None
    into.append(proc.stderr.readline())
    return into[-1]


def test_a_lease_is_renewed_while_held_and_released_after(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    fs, root = pafs.LocalFileSystem(), str(tmp_path)
    first = OutputLease(fs, root, ttl_s=30)
    first.acquire()
    before = first.holder
    assert before is not None
    first.renew()
    after = first.holder
    assert after is not None and after.expires_at >= before.expires_at
    with pytest.raises(LeaseHeld) as held:
        OutputLease(fs, root, ttl_s=30).acquire()
    assert held.value.holder.token == after.token
    first.release()
    second = OutputLease(fs, root, ttl_s=30)
    second.acquire()  # a released lease is free at once
    with pytest.raises(LeaseLost):
        first.renew()  # the first holder knows it no longer holds it
    second.release()


# --- one queue per output (issue 12, case 8) ------------------------------------------------


def write_queue_shard(shards: Path, ids: list[int], queue: str) -> str:
    writer = ShardWriter(
        ShardSettings(cold_uri=str(shards), hot_dir=shards.parent / "hot", max_rows=10**9),
        owner=uuid.uuid4().hex,
        dimension=DIM,
        metadata=ShardMetadata(model_id="test/model", normalize=True, queue=queue),
    )
    writer.append(ids, vectors_for(ids, 1), T0, hashes(ids))
    receipt = writer.roll()
    assert receipt is not None
    return receipt.name


def test_shards_of_another_queue_are_refused_by_name(dirs: tuple[Path, Path]) -> None:
    shards, out = dirs
    ours = "db.articles:emb:aaaaaaaaaaaa"
    theirs = "db.tweets:emb:aaaaaaaaaaaa"
    write_queue_shard(shards, list(range(100)), ours)
    other = write_queue_shard(shards, list(range(100)), theirs)  # the same ids

    report = Consolidator(settings(shards, out, queue=ours)).run()

    assert report.duplicates_dropped == 0 and report.rows_out == 100
    assert ours in report.bad_shards[other] and theirs in report.bad_shards[other]
    assert (shards / other).exists()
    assert mf.load(*_local(out)).queue == ours
    # Without being told, the output keeps the queue it holds.
    again = Consolidator(settings(shards, out)).run()
    assert other in again.bad_shards and again.duplicates_dropped == 0


# --- the winner does not depend on host clocks (issue 12, case 5) ---------------------------


async def test_the_row_of_the_latest_claim_wins_whatever_the_hosts_clocks(
    mongo: Any, ws: Workspace, tei: Any, tmp_path: Path
) -> None:
    """A worker whose clock is 10 minutes fast embeds everything; texts are then edited and
    re-queued, and a worker with a true clock embeds the new texts. The consolidated row of
    each edited doc must be the new text's, the one its mark names."""
    corpus = corpora.tweets(60)
    queue = await seed(mongo, ws.database, corpus)
    fast = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "tests.support.skewed_clock",
            "600",
            *ws.args([tei.url], "--once", "--store-text-hash")[1:],
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert fast.returncode == 0, fast.stderr[-3000:]
    edited = {doc_id: f"edited text of {doc_id}" for doc_id in list(corpus.eligible)[:20]}
    docs = mongo[ws.database][queue.collection]
    for doc_id, text in edited.items():
        await docs.update_one({"_id": doc_id}, {"$set": {"text": text}})
    requeued = await asyncio.to_thread(run_python, ws.queue_command("requeue", "--changed-text"))
    assert requeued.returncode == 0, requeued.stderr
    true_clock = await asyncio.to_thread(ws.run, [tei.url], "--once", "--store-text-hash")
    assert true_clock == 0, ws.log()

    out = tmp_path / "consolidated"
    done = await asyncio.to_thread(ws.consolidate, out)
    assert done.returncode == 0, done.stderr

    table = pa.concat_tables(pq.read_table(out / f.name) for f in mf.load(*_local(out)).files)
    ids = [
        decode_id(t, k)
        for t, k in zip(table["_id"].to_pylist(), table["_id_kind"].to_pylist(), strict=True)
    ]
    rows = dict(zip(ids, range(len(ids)), strict=True))
    state = await marks(mongo, queue)
    expected = corpora.expected_vectors(list(edited.values()), 64)
    for (doc_id, text), vector in zip(edited.items(), expected, strict=True):
        row = rows[doc_id]
        assert table["text_hash"][row].as_py() == text_hash(text), f"{doc_id}: a stale row won"
        assert table["text_hash"][row].as_py() == bytes(state[doc_id]["text_hash"])
        np.testing.assert_allclose(table["embedding"][row].values.to_numpy(), vector, atol=1e-5)


# --- two queues never share an output (issue 12, case 8) ------------------------------------


def _embed_in(cwd: Path, ws: Workspace, urls: list[str]) -> subprocess.CompletedProcess[str]:
    """``embedder embed --once`` run from ``cwd`` with the default shard directory."""
    args = ws.args(urls, "--once")[1:]
    at = args.index("--output-dir")
    del args[at : at + 2]
    return subprocess.run(
        [sys.executable, "-m", "embedder.cli", "embed", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_two_collections_with_equal_ids_never_merge(
    mongo: Any, ws: Workspace, tei: Any, tmp_path: Path
) -> None:
    tweets, articles = corpora.tweets(40), corpora.tweets(40)  # the same ids
    await seed(mongo, ws.database, tweets, collection="tweets")
    other = Workspace(ws.mongo_uri, ws.database, ws.root, collection="articles")
    await seed(mongo, ws.database, articles, collection="articles")
    keys = {QueueSpec("tweets", ws.database).key, QueueSpec("articles", ws.database).key}

    # One shard directory given to both: the consolidator takes one queue and refuses the
    # other's shards by name, dropping nothing as a "duplicate".
    for workspace in (ws, other):
        code = await asyncio.to_thread(workspace.run, [tei.url], "--once")
        assert code == 0, workspace.log()
    out = tmp_path / "shared-out"
    report_path = tmp_path / "report.json"
    mixed = await asyncio.to_thread(
        run_python,
        [
            "consolidate_embeddings.py",
            "--shards-dir",
            str(ws.shards),
            "--consolidated-dir",
            str(out),
            "--report-json",
            str(report_path),
        ],
    )
    assert mixed.returncode == 1, mixed.stderr  # shards left in place: a discrepancy
    report = orjson.loads(report_path.read_bytes())
    assert report["duplicates_dropped"] == 0 and report["rows_out"] == len(tweets.eligible)
    refusals = list(report["bad_shards"].values())
    assert refusals and all(key in refusals[0] for key in keys), refusals
    assert mf.load(*_local(out)).queue in keys
    assert len(list(ws.shards.glob("*.parquet"))) == len(report["bad_shards"])

    # With every option at its default, the two queues write and consolidate apart.
    await mongo[ws.database]["tweets"].update_many({}, {"$unset": {DEFAULT_TARGET: ""}})
    await mongo[ws.database]["articles"].update_many({}, {"$unset": {DEFAULT_TARGET: ""}})
    await mongo[ws.database][CONTROL].delete_many({})
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    outputs = []
    for workspace in (ws, other):
        embedded = await asyncio.to_thread(_embed_in, deploy, workspace, [tei.url])
        assert embedded.returncode == 0, embedded.stderr[-3000:]
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "embedder.cli",
                "consolidate",
                "--collection",
                workspace.collection,
                "--database",
                ws.database,
            ],
            check=False,
            cwd=deploy,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, done.stderr
        outputs.append(next(deploy.glob(f"embeddings/*/{workspace.collection}/*/consolidated")))
    assert outputs[0] != outputs[1]
    for output, corpus in zip(outputs, (tweets, articles), strict=True):
        manifest = mf.load(*_local(output))
        assert manifest.total_rows == len(corpus.eligible)
    assert {mf.load(*_local(o)).queue for o in outputs} == keys


def test_a_lease_record_its_writer_died_writing_expires_like_any_other(
    dirs: tuple[Path, Path],
) -> None:
    shards, out = dirs
    write_shard(shards, [1, 2], version=1)
    damaged = out / LEASE_DIR / "000000000001.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"")  # created exclusively, then killed before writing

    refused = _consolidate_cli(shards, out)
    assert refused.returncode == LEASE_HELD_EXIT, refused.stderr
    assert "damaged" in refused.stderr.strip().splitlines()[-1]

    an_hour_ago = time.time() - 3600
    os.utime(damaged, (an_hour_ago, an_hour_ago))
    done = _consolidate_cli(shards, out)
    assert done.returncode == 0, done.stderr
    assert set(output_rows(out)) == {"1", "2"}


# --- issue 12 review: one embed key per output; a paused consolidator; object stores --------

_CLS_POOLING = {"info": {"model_type": {"embedding": {"pooling": "cls"}}}, "model_seed": 7}


def _output_embed_keys(out: Path) -> set[str]:
    manifest = mf.load(*_local(out))
    keys = set()
    for f in manifest.files:
        meta = pq.read_schema(out / f.name).metadata or {}
        keys.add(meta.get(b"embedder.embed_key", b"").decode())
    return keys


async def test_output_never_mixes_two_embed_keys_after_shards_are_retired(
    ws: Workspace, mongo: Any, tei_factory: Callable[..., Any]
) -> None:
    """Mean-pooled docs are consolidated (their shards retired); TEI restarts with cls pooling,
    named by a new --model-revision (another embed key, same model id and dimension), and new
    docs arrive: the output must not take their shards, which stay in place with a message
    naming both keys."""
    corpus = corpora.tweets(40)
    queue = await seed(mongo, ws.database, corpus)
    mean = tei_factory()
    assert await asyncio.to_thread(ws.run, [mean.url], "--once") == 0, ws.log()
    out = ws.root / "consolidated"
    first = await asyncio.to_thread(ws.consolidate, out)
    assert first.returncode == 0, first.stderr
    await mongo[ws.database][queue.collection].insert_many(
        [
            {"_id": 10**19 // 10 + i, "lang": "en", "classified": True, "text": f"new {i}"}
            for i in range(20)
        ]
    )
    cls = tei_factory("--faults", orjson.dumps(_CLS_POOLING).decode())
    code = await asyncio.to_thread(
        ws.run, [cls.url], "--once", "--model-revision", "cls", log="cls.log"
    )
    assert code == 0, ws.log("cls.log")
    second = await asyncio.to_thread(ws.consolidate, out)
    assert len(_output_embed_keys(out)) == 1, (_output_embed_keys(out), second.stderr)
    assert "embed key" in second.stderr, second.stderr
    assert ws.has_shard(), "the refused shards are left in place"


_PAUSING = """
import os, signal, sys
import embedder.storage.consolidate as c
def point(name):
    if name == os.environ["PAUSE_AT"]:
        os.kill(os.getpid(), signal.SIGSTOP)
c.failpoint = point
from embedder.cli import main
main(["consolidate", *sys.argv[1:]])
"""


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_consolidator_paused_past_its_lease_cannot_write_an_old_manifest(
    tmp_path: Path,
) -> None:
    """A is stopped (a VM pause, a GC stall) just before it replaces the manifest; B takes the
    expired lease, finishes A's commit and commits newer shards (retiring them). When A
    resumes it must not write its older manifest over B's; and after one more run every doc
    is reachable through the manifest exactly once, with no output file outside it."""
    shards, out = tmp_path / "shards", tmp_path / "consolidated"
    write_shard(shards, list(range(0, 20)), version=1)
    args = ["--shards-dir", str(shards), "--consolidated-dir", str(out), "--lease-ttl", "3"]
    a = subprocess.Popen(
        [sys.executable, "-c", _PAUSING, *args],
        cwd=ROOT,
        env={**os.environ, "PAUSE_AT": "consolidate.before-manifest"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _stopped(a.pid):
            assert a.poll() is None and time.monotonic() < deadline, a.stdout and a.stdout.read()
            time.sleep(0.05)
        write_shard(shards, list(range(20, 40)), version=2)
        while True:  # B steps aside (exit 4) until A's lease has expired
            b = run_python(["consolidate_embeddings.py", *args])
            if b.returncode != LEASE_HELD_EXIT or time.monotonic() > deadline:
                break
        assert b.returncode == 0, b.stdout + b.stderr
    finally:
        a.send_signal(signal.SIGCONT)
    a.wait(60)
    said = a.stdout.read().decode() if a.stdout else ""
    # A re-reads the manifest right before replacing it: written under a newer lease, refused.
    assert a.returncode != 0 and "lease generation" in said, said
    last = run_python(["consolidate_embeddings.py", *args])
    assert last.returncode == 0, last.stdout + last.stderr
    rows = output_rows(out)  # also: no output file outside the manifest
    assert set(rows) == {str(i) for i in range(40)}


def test_an_output_file_outside_the_manifest_is_adopted_by_the_next_run(tmp_path: Path) -> None:
    """The window no filesystem without compare-and-swap can close: a paused writer's older
    manifest lands over a newer one, leaving a published file outside it. The next run merges
    that file's rows back (newest claim wins, as for any duplicate): nothing stays unreachable."""
    shards, out = tmp_path / "shards", tmp_path / "consolidated"
    write_shard(shards, list(range(0, 20)), version=1)
    consolidator = Consolidator(ConsolidateSettings(str(shards), str(out)))
    consolidator.run()
    old_manifest = (out / mf.MANIFEST_NAME).read_bytes()
    write_shard(shards, list(range(20, 30)), version=2)
    consolidator.run()
    (out / mf.MANIFEST_NAME).write_bytes(old_manifest)  # the stale writer's manifest
    assert len(list(out.glob("*.parquet"))) > len(mf.load(*_local(out)).files)
    write_shard(shards, list(range(25, 35)), version=3)  # newer rows of some adopted docs
    report = consolidator.run()
    rows = output_rows(out)
    assert set(rows) == {str(i) for i in range(35)}, report
    assert [survivor_version(rows[str(i)], i) for i in range(20, 35)] == [2] * 5 + [3] * 10


def _race_for_the_lease(make: Callable[[], OutputLease]) -> list[object]:
    """Two would-be holders that look at the same moment; what each got."""
    won: list[object] = []
    start = threading.Barrier(2)

    def take() -> None:
        try:
            lease = make()
            start.wait()
            lease.acquire()
            won.append(True)
        except Exception as exc:  # LeaseHeld, or the refusal of a store without a create
            won.append(exc)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_two_consolidators_on_an_object_store_never_both_hold_the_output() -> None:
    """A store without a conditional create (here an in-memory fsspec store whose listing is
    slow, as S3's is) could only check, then write: two consolidators that look at once would
    both take generation 1. Unless told it is the only consolidator, the lease is refused."""
    import fsspec  # type: ignore[import-untyped]
    import pyarrow.fs as pafs
    from pyarrow.fs import FSSpecHandler

    class SlowStore(FSSpecHandler):  # type: ignore[misc]
        # The answer is read at once and arrives late, as an S3 round trip's does.
        def get_file_info(self, paths):  # type: ignore[no-untyped-def]
            answer = super().get_file_info(paths)
            time.sleep(0.2)
            return answer

        def get_file_info_selector(self, selector):  # type: ignore[no-untyped-def]
            answer = super().get_file_info_selector(selector)
            time.sleep(0.2)
            return answer

    store = pafs.PyFileSystem(SlowStore(fsspec.filesystem("memory")))
    store.create_dir("bucket/out", recursive=True)
    won = _race_for_the_lease(lambda: OutputLease(store, "bucket/out", ttl_s=60))
    assert won.count(True) <= 1, f"both consolidators hold the lease: {won}"
    assert all(w is True or "conditional create" in str(w) for w in won), won


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 server with a bucket "bucket": a pyarrow S3FileSystem on it."""
    with moto_s3(monkeypatch) as fs:
        yield fs


def test_on_s3_exactly_one_of_two_consolidators_takes_the_output(s3_server: Any) -> None:
    """On s3:// the lease creates its records with If-None-Match: * (a real S3-compatible
    server on loopback): of two consolidators that look at the same moment, exactly one
    takes the output, round after round."""
    from embedder.storage import conditional_create

    create = conditional_create.for_uri("s3://bucket/out")
    assert create is not None
    for round_ in range(10):
        root = f"bucket/out{round_}"

        def make(root: str = root) -> OutputLease:
            return OutputLease(s3_server, root, ttl_s=60, create_exclusive=create)

        won = _race_for_the_lease(make)
        assert won.count(True) == 1, f"round {round_}: {won}"
        assert all(w is True or isinstance(w, LeaseHeld) for w in won), won


def test_an_s3_output_is_consolidated_under_a_conditional_lease(
    tmp_path: Path, s3_server: Any
) -> None:
    """The conditional create is chosen for an s3:// output without being asked for (a store
    without one is refused), and a run commits there."""
    shards = tmp_path / "shards"
    write_shard(shards, list(range(20)), version=1)
    settings = ConsolidateSettings(str(shards), "s3://bucket/out", output_filesystem=s3_server)
    report = Consolidator(settings).run()
    assert report.rows_out == 20
    manifest = mf.load(s3_server, "bucket/out")
    assert manifest.total_rows == 20 and manifest.lease_generation == 1
    with pytest.raises(ConfigurationError, match="conditional create"):
        OutputLease(s3_server, "bucket/out", ttl_s=60)  # no create given: refused
