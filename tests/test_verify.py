"""The whole journey: embed, consolidate, verify; and verify catching what is wrong."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pymongo import AsyncMongoClient

from tests import corpus as corpora
from tests.servers import FaultTei, run_python
from tests.worker import Workspace, seed


def _verify(ws: Workspace, out: Path) -> Any:
    return run_python(ws.command("verify", "--consolidated-dir", str(out)))


async def test_embed_consolidate_verify(
    mongo_uri: str,
    db_name: str,
    tmp_path: Path,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
) -> None:
    ws = Workspace(mongo_uri, db_name, tmp_path)
    tei = tei_factory("--dimension", "32")
    corpus = corpora.tweets(300)
    await seed(mongo, db_name, corpus)
    assert await asyncio.to_thread(ws.run, [tei.url], "--once", "--shard-rows", "50") == 0, ws.log()
    out = tmp_path / "consolidated"

    consolidated = await asyncio.to_thread(ws.consolidate, out)
    assert consolidated.returncode == 0, consolidated.stderr
    assert pq.read_table(out).num_rows == len(corpus.eligible)

    good = await asyncio.to_thread(_verify, ws, out)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "verify: OK" in good.stdout and f"{len(corpus.eligible)} docs marked done" in good.stdout

    # A doc marked done whose vector is nowhere: verify must fail and name it.
    extra = next(iter(corpus.ineligible))
    await mongo[db_name]["tweets"].update_one(
        {"_id": extra}, {"$set": {"gemma_embedded_768": {"status": "done"}}}
    )
    bad = await asyncio.to_thread(_verify, ws, out)
    assert bad.returncode == 1
    assert (
        "verify: FAILED" in bad.stdout
        and "missing from the output: 1" in bad.stdout
        and str(extra) in bad.stdout
    )

    # The same rows consolidated twice (a copied file): duplicates are reported.
    await mongo[db_name]["tweets"].update_one(
        {"_id": extra}, {"$unset": {"gemma_embedded_768": ""}}
    )
    first = next(out.glob("part-*.parquet"))
    shutil.copy(first, out / "part-copy.parquet")
    import pyarrow.fs as pafs

    from embedder import manifest as mf

    manifest = mf.load(pafs.LocalFileSystem(), str(out))
    original = manifest.files[0]
    manifest.files.append(
        mf.OutputFile(
            "part-copy.parquet",
            original.rows,
            original.bytes,
            original.sha256,
            [],
            original.created_at,
        )
    )
    mf.save(pafs.LocalFileSystem(), str(out), manifest)
    doubled = await asyncio.to_thread(_verify, ws, out)
    assert doubled.returncode == 1 and f"duplicate rows: {original.rows}" in doubled.stdout
