"""The work queue against a real MongoDB server protocol: index use, leases, marking."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from embedder.errors import ConfigurationError
from embedder.ids import Bound, range_clauses, sort_key
from embedder.queue import connection as mongo_setup
from embedder.queue.marks import DoneMark
from embedder.queue.spec import QueueSpec
from embedder.queue.work_queue import MongoWorkQueue
from tests.support import corpus as corpora
from tests.support.mongosh import indexes_js_creates
from tests.support.servers import run_python
from tests.support.worker import seed

Client = AsyncMongoClient[dict[str, Any]]


def _uses_index(plan: Any, name: str) -> bool:
    """Whether an explain() answer names the index as the one the query runs on.

    MongoDB reports it as ``indexName`` of an IXSCAN stage in the winning plan; mongoeco
    reports the index it planned with as ``hinted_index``. Both are searched for.
    """
    if isinstance(plan, dict):
        if plan.get("indexName") == name or plan.get("hinted_index") == name:
            return True
        return any(_uses_index(v, name) for k, v in plan.items() if k != "rejectedPlans")
    if isinstance(plan, list):
        return any(_uses_index(v, name) for v in plan)
    return False


async def test_queue_queries_run_on_the_partial_index(mongo: Client, db_name: str) -> None:
    spec = await seed(mongo, db_name, corpora.tweets(50))
    docs = mongo[db_name]["tweets"]

    per_type = range_clauses(Bound(10, inclusive=False), Bound("tweet-9", inclusive=True))
    for query in (
        spec.pending_query(),
        spec.pending_query({"$gt": 10}),
        spec.pending_query({"$gte": 1, "$lte": 9}),
        *(spec.pending_query(clause) for clause in per_type),
    ):
        plan = await docs.find(query).sort("_id", 1).hint(spec.index_name).explain()
        assert _uses_index(plan, spec.index_name), plan

    # The server refuses a hint to a partial index the query does not imply; our queries
    # pass that check because they carry the partial filter's predicates verbatim.
    without_partial = {k: v for k, v in spec.pending_query().items() if k != spec.target_field}
    with pytest.raises(OperationFailure):
        await docs.find(without_partial).hint(spec.index_name).to_list()


async def test_indexes_are_created_idempotently_from_the_cli(
    mongo_uri: str, mongo: Client, db_name: str
) -> None:
    args = [
        "-m",
        "embedder.cli",
        "indexes",
        "--collection",
        "tweets",
        "--mongo-uri",
        mongo_uri,
        "--database",
        db_name,
    ]
    for _ in range(2):
        done = await asyncio.to_thread(run_python, args)
        assert done.returncode == 0, done.stderr
    info = await mongo[db_name]["tweets"].index_information()
    queue = info["embedding_work_queue"]
    assert [tuple(k) for k in queue["key"]] == [("lang", 1), ("classified", 1), ("_id", 1)]
    assert dict(queue["partialFilterExpression"]) == {"retweeted": None, "gemma_embedded_768": None}
    assert info["embedding_done"]["sparse"] is True


@pytest.mark.parametrize(
    ("variables", "spec"),
    [
        ({}, {}),
        ({"target": "vec_384"}, {"target_field": "vec_384"}),
        (
            {"target": "v", "filter": {"lang": 1}, "exclude": {"deleted": None}},
            {"target_field": "v", "filter": {"lang": "en"}, "exclude": {"deleted": None}},
        ),
        # --filter '{}': every doc; its queue index must not take the _id index's keys.
        ({"filter": {}}, {"filter": {}}),
    ],
)
async def test_indexes_js_creates_the_indexes_embedder_indexes_creates(
    mongo: Client, db_name: str, variables: dict[str, Any], spec: dict[str, Any]
) -> None:
    """mongo/indexes.js, run with a recording ``db``, against what ``ensure_indexes`` (the code
    behind ``embedder indexes``) leaves on the server: same names, keys in the same order,
    same partial filter, same sparseness."""
    queue = QueueSpec(collection="tweets", database=db_name, **spec)
    await mongo_setup.ensure_indexes(mongo, queue)
    info = await mongo[db_name]["tweets"].index_information()
    by_python = {
        name: ([tuple(k) for k in index["key"]], _index_options(index))
        for name, index in info.items()
        if name != "_id_"
    }

    by_script = {
        created.options["name"]: (created.keys, _index_options(created.options))
        for created in indexes_js_creates(collection="tweets", **variables)
        if created.collection == "tweets"
    }

    assert by_script == by_python
    assert set(by_script) == {queue.index_name, queue.done_index_name}


def _index_options(index: dict[str, Any]) -> dict[str, Any]:
    """The options that make two indexes of one name the same index."""
    options: dict[str, Any] = {
        k: index[k] for k in ("partialFilterExpression", "sparse") if k in index
    }
    if "partialFilterExpression" in options:
        options["partialFilterExpression"] = dict(options["partialFilterExpression"])
    return options


async def test_missing_index_is_a_clear_configuration_error(mongo: Client, db_name: str) -> None:
    await mongo[db_name]["tweets"].insert_one({"text": "hi"})
    with pytest.raises(ConfigurationError, match="embedder indexes --collection tweets"):
        await mongo_setup.check_indexes(mongo, QueueSpec(collection="tweets", database=db_name))


async def test_index_with_another_partial_filter_is_refused(mongo: Client, db_name: str) -> None:
    await mongo[db_name]["tweets"].create_index(
        [("lang", 1), ("classified", 1), ("_id", 1)],
        name="embedding_work_queue",
        partialFilterExpression={"gemma_embedded_768": None},
    )
    with pytest.raises(ConfigurationError, match="does not serve this queue"):
        await mongo_setup.check_indexes(mongo, QueueSpec(collection="tweets", database=db_name))


def test_unreachable_mongodb_is_reported_without_the_password(tmp_path: Path) -> None:
    uri = "mongodb://admin:hunter2secret@127.0.0.1:1/?serverSelectionTimeoutMS=500"
    args = [
        "embed_tweets.py",
        "--collection",
        "tweets",
        "--tei-urls",
        "http://127.0.0.1:1",
        "--mongo-uri",
        uri,
        "--output-dir",
        str(tmp_path / "out"),
        "--hot-dir",
        str(tmp_path / "hot"),
    ]
    done = run_python(args)
    assert done.returncode != 0
    assert "not reachable" in done.stderr
    assert "hunter2secret" not in done.stderr + done.stdout
    assert "admin:***@" in done.stderr


class _Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def test_leases_never_overlap_and_expired_ones_are_taken_over(
    mongo: Client, db_name: str
) -> None:
    spec = await seed(mongo, db_name, corpora.tweets(100))
    clock = _Clock()
    alive = MongoWorkQueue(mongo, spec, claim_size=30, lease_ttl_s=10, clock=clock)
    doomed = MongoWorkQueue(mongo, spec, claim_size=30, lease_ttl_s=10, clock=clock)
    await alive.register()
    await doomed.register()

    lost = await doomed.claim()
    kept = await alive.claim()
    assert lost and kept
    assert not {d["_id"] for d in lost.documents} & {d["_id"] for d in kept.documents}
    assert kept.lease.lo > lost.lease.hi

    # The doomed worker stops heart-beating; once its heartbeat expires, its lease moves.
    clock.now += dt.timedelta(seconds=11)
    await alive.heartbeat()
    taken = await alive.claim()
    assert taken is not None and taken.taken_over
    assert {d["_id"] for d in taken.documents} == {d["_id"] for d in lost.documents}
    assert taken.lease.owner == alive.owner

    # Marking is idempotent: the second mark of the same docs changes nothing.
    ids = [d["_id"] for d in taken.documents]
    mark = DoneMark("m", None, "shard-1.parquet")
    assert await alive.mark(ids, mark, []) == len(ids)
    assert await alive.mark(ids, mark, []) == 0
    await alive.release([taken.lease])


async def test_a_pass_restarts_from_the_beginning_and_finds_new_docs(
    mongo: Client, db_name: str
) -> None:
    spec = await seed(mongo, db_name, corpora.tweets(20, id_kind="int"))
    queue = MongoWorkQueue(mongo, spec, claim_size=100)
    await queue.register()
    claim = await queue.claim()
    assert claim is not None
    ids = [d["_id"] for d in claim.documents]
    await queue.mark(ids, DoneMark("m", None, "s"), [])
    await queue.release([claim.lease])
    assert await queue.claim() is None

    # A doc inserted behind the cursor is found by the next pass.
    await mongo[db_name]["tweets"].insert_one(
        {"_id": 1, "lang": "en", "classified": True, "text": "late"}
    )
    late = await queue.claim()
    assert late is not None and [d["_id"] for d in late.documents] == [1]


async def test_a_target_field_holding_foreign_values_is_refused(
    mongo: Client, db_name: str
) -> None:
    spec = QueueSpec(collection="tweets", database=db_name)
    docs = mongo[db_name]["tweets"]
    await docs.insert_many([{"_id": i, "gemma_embedded_768": {"status": "done"}} for i in range(5)])
    await mongo_setup.check_target_field(mongo, spec)  # our own marks are fine
    await docs.insert_one({"_id": 99, "gemma_embedded_768": True})  # what the seed script wrote
    with pytest.raises(ConfigurationError, match="already holds values embedder did not write"):
        await mongo_setup.check_target_field(mongo, spec)


class _SkewedClock:
    def __init__(self, base: _Clock, skew_s: float) -> None:
        self._base, self._skew = base, dt.timedelta(seconds=skew_s)

    def __call__(self) -> dt.datetime:
        return self._base() + self._skew


@pytest.mark.parametrize(("skew_s", "taken_over"), [(15.0, False), (-15.0, False), (35.0, True)])
async def test_clock_skew_within_the_bound_never_moves_a_live_lease(
    mongo: Client, db_name: str, skew_s: float, taken_over: bool
) -> None:
    # TTL 30 s, heartbeats every 10 s (the worker beats at TTL/3). A live worker's lease can be
    # taken only by a worker whose clock runs ahead by more than TTL - 10 s = 20 s: the bound.
    spec = await seed(mongo, db_name, corpora.tweets(40))
    clock = _Clock()
    holder = MongoWorkQueue(mongo, spec, claim_size=20, lease_ttl_s=30, clock=clock)
    other = MongoWorkQueue(
        mongo, spec, claim_size=20, lease_ttl_s=30, clock=_SkewedClock(clock, skew_s)
    )
    await holder.register()
    await other.register()
    held = await holder.claim()
    assert held is not None
    for _ in range(3):  # three heartbeat intervals pass, the holder beating on time
        clock.now += dt.timedelta(seconds=10)
        await holder.heartbeat()
        await other.heartbeat()
    claimed = await other.claim()
    moved = claimed is not None and claimed.taken_over
    assert moved is taken_over
    if not taken_over and claimed is not None:
        assert not {d["_id"] for d in claimed.documents} & {d["_id"] for d in held.documents}


async def test_a_filter_the_index_cannot_serve_is_refused(mongo: Client, db_name: str) -> None:
    await seed(mongo, db_name, corpora.tweets(5))
    spec = QueueSpec(collection="tweets", database=db_name, filter={"country": "fr"})
    with pytest.raises(ConfigurationError, match="does not serve this queue"):
        await mongo_setup.check_indexes(mongo, spec)


async def test_range_predicates_on_the_test_server_match_their_own_type_only(
    mongo: Client, db_name: str
) -> None:
    """The suite's server applies MongoDB's type bracketing, so code that pages ``_id``
    across types fails here as it would on a real MongoDB."""
    docs = mongo[db_name]["mixed"]
    oid = ObjectId()
    await docs.insert_many([{"_id": 5}, {"_id": 7.5}, {"_id": "abc"}, {"_id": oid}])

    async def ids(query: dict[str, Any]) -> list[Any]:
        return [d["_id"] async for d in docs.find({"_id": query}).sort("_id", 1)]

    assert await ids({"$gt": 5}) == [7.5]
    assert await ids({"$gte": "a"}) == ["abc"]
    assert await ids({"$lt": oid}) == []
    assert await ids({"$gte": 0, "$lte": "zzz"}) == []  # no value is both a number and a string
    # Sorting still orders every type: numbers, then strings, then ObjectIds.
    assert [d["_id"] async for d in docs.find().sort("_id", 1)] == [5, 7.5, "abc", oid]


async def test_a_lease_spanning_two_id_types_is_taken_over_a_page_at_a_time(
    mongo: Client, db_name: str
) -> None:
    corpus = corpora.mixed_ids(30)  # 35 pending docs of each type: ints < strings < ObjectIds
    spec = await seed(mongo, db_name, corpus)
    clock = _Clock()
    doomed = MongoWorkQueue(mongo, spec, claim_size=50, lease_ttl_s=10, clock=clock)
    taker = MongoWorkQueue(mongo, spec, claim_size=20, lease_ttl_s=10, clock=clock)
    await doomed.register()
    await taker.register()
    lost = await doomed.claim()
    assert lost is not None
    lost_ids = [d["_id"] for d in lost.documents]
    assert {str if isinstance(i, str) else int for i in lost_ids} == {int, str}, (
        "the lease spans two BSON types"
    )

    # The doomed worker dies; its lease is redone, in pages of the taker's claim size.
    clock.now += dt.timedelta(seconds=11)
    await taker.heartbeat()
    mark = DoneMark("m", None, "shard.parquet")
    redone: list[Any] = []
    rest: list[Any] = []
    while (claim := await taker.claim()) is not None:
        ids = [d["_id"] for d in claim.documents]
        assert len(ids) <= 20
        (redone if claim.taken_over else rest).extend(ids)
        assert await taker.mark(ids, mark, []) == len(ids)
        await taker.release([claim.lease])
    assert redone == lost_ids, "exactly the lost lease's docs, in order"
    pending = [*corpus.eligible, *corpus.bad]
    assert sorted(redone + rest, key=sort_key) == sorted(pending, key=sort_key)


async def test_a_pending_doc_whose_id_type_no_range_reaches_is_named(
    mongo: Client, db_name: str
) -> None:
    spec = await seed(mongo, db_name, corpora.tweets(5))
    await mongo[db_name]["tweets"].insert_one(
        {"_id": {"tenant": 7}, "lang": "en", "classified": True, "text": "an object id"}
    )
    queue = MongoWorkQueue(mongo, spec, claim_size=100)
    await queue.register()
    claim = await queue.claim()
    assert claim is not None and len(claim.documents) == 10  # 5 eligible, 5 bad texts
    with pytest.raises(ConfigurationError, match=r"doc \{'tenant': 7\}: _id of type dict"):
        await queue.claim()


async def test_every_claim_takeover_and_adoption_gets_a_higher_sequence_number(
    mongo: Client, db_name: str
) -> None:
    """claim_seq is issued by MongoDB: it orders claims of a doc whatever the hosts' clocks."""
    spec = await seed(mongo, db_name, corpora.tweets(90))
    clock = _Clock()
    first = MongoWorkQueue(mongo, spec, claim_size=30, lease_ttl_s=10, clock=clock)
    doomed = MongoWorkQueue(mongo, spec, claim_size=30, lease_ttl_s=10, clock=clock)
    await first.register()
    await doomed.register()
    a, b = await first.claim(), await doomed.claim()
    assert a and b and 0 < a.seq < b.seq

    # The same owner after losing a claim's answer adopts its lease under a new number.
    again = MongoWorkQueue(
        mongo, spec, claim_size=30, lease_ttl_s=10, clock=clock, owner=first.owner
    )
    adopted = await again.claim()
    assert adopted is not None and adopted.taken_over and adopted.seq > b.seq

    clock.now += dt.timedelta(seconds=11)
    await again.heartbeat()
    taken = await again.claim()
    assert taken is not None and taken.taken_over and taken.lease.id == b.lease.id
    assert taken.seq > adopted.seq
