"""Fixtures: a MongoDB (mongoeco's wire server, or a real one) and TEI-compatible servers.

Set ``EMBEDDER_TEST_MONGODB_URI`` to run every MongoDB test against a real MongoDB; each test
uses a database of its own and drops it afterwards. Without it the tests run on mongoeco held
to MongoDB's type bracketing of range predicates (``tests.support.strict_mongo``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from pymongo import AsyncMongoClient

from embedder.telemetry import Summary
from tests.support.mongo import REAL_MONGO, RestartableMongo
from tests.support.servers import FaultTei, Process, start
from tests.support.worker import Workspace

# No deadline per example: on a loaded machine a slow example is not a wrong one.
settings.register_profile("embedder", deadline=None)
settings.load_profile("embedder")

# Run under pytest-xdist with --dist loadgroup: each cluster (a one-node SLURM, a Ray head)
# is started by one worker at a time, never twice at once on one machine.
ONE_CLUSTER_AT_A_TIME = ("test_slurm.py", "test_ray.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in ONE_CLUSTER_AT_A_TIME:
            item.add_marker(pytest.mark.xdist_group("clusters"))


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REAL_MONGO:
        yield REAL_MONGO
        return
    log = tmp_path_factory.mktemp("mongo") / "dev-mongo.log"
    server = start(["-m", "tests.support.strict_mongo", "--port", "0"], log)
    yield server.address
    server.stop()


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[RestartableMongo]:
    """An embedded MongoDB of the test's own, which it may stop and restart."""
    server = RestartableMongo(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db_name() -> str:
    return f"embedder_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def mongo(mongo_uri: str, db_name: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield client
    await client.drop_database(db_name)
    await client.close()


@pytest.fixture
def tei_factory(tmp_path: Path) -> Iterator[Callable[..., FaultTei]]:
    """Start fault-injecting TEI servers; all are stopped after the test."""
    started: list[Process] = []

    def make(*extra: str) -> FaultTei:
        log = tmp_path / f"tei-{len(started)}.log"
        process = start(["-m", "tests.support.fault_tei", "--port", "0", *extra], log)
        started.append(process)
        return FaultTei(process)

    yield make
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def module_tei(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultTei]:
    """One fault-injecting TEI server for all the tests of a module (see ``tei``)."""
    log = tmp_path_factory.mktemp("tei") / "tei.log"
    process = start(["-m", "tests.support.fault_tei", "--port", "0"], log)
    yield FaultTei(process)
    process.stop()


@pytest.fixture
def tei(module_tei: FaultTei) -> FaultTei:
    """A fault-injecting TEI server with no faults and no counts: the module's, reset."""
    module_tei.reset()
    return module_tei


@pytest.fixture
def ws(mongo_uri: str, db_name: str, tmp_path: Path) -> Workspace:
    """Where a test's worker runs: its database, and shard directories under tmp_path."""
    return Workspace(mongo_uri, db_name, tmp_path)


@pytest.fixture
def worker(ws: Workspace) -> Callable[..., Awaitable[Summary]]:
    """Run the worker once, in the test's event loop, on ``ws``: ``await worker(urls,
    claim_size=100)`` returns the run's summary (``Workspace.burst``)."""
    return ws.burst
