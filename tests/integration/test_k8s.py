"""deploy/k8s: rendered by kustomize, every object checked against the Kubernetes schemas, and
KEDA's MongoDB query run against a real queue."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from bson import json_util
from pymongo import AsyncMongoClient

from embedder.queue.spec import QueueSpec
from tests.support import corpus as corpora
from tests.support.servers import ROOT, run_python
from tests.support.worker import Workspace, seed

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
Object = dict[str, Any]


def _kustomize() -> list[str]:
    if path := shutil.which("kustomize"):
        return [path, "build"]
    if path := shutil.which("kubectl"):
        return [path, "kustomize"]
    pytest.fail("neither kustomize nor kubectl is installed: `make system-deps` installs kubectl")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Object]:
    """`kubectl kustomize deploy/k8s` with the example secrets in place of the real ones."""
    work = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, work, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(work / "secrets.env.example", work / "secrets.env")
    done = subprocess.run(
        [*_kustomize(), str(work)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[Object], kind: str, name: str) -> Object:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def containers(obj: Object) -> Iterator[Object]:
    spec = obj["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config(objects: list[Object]) -> dict[str, str]:
    data: dict[str, str] = find(objects, "ConfigMap", "embedder-config")["data"]
    return data


def plan_indexes(explained: dict[str, Any]) -> set[str]:
    """The indexes (and COLLSCAN) in a count's winning plan. MongoDB names them in
    queryPlanner.winningPlan; mongoeco, which has no planner stages, lists the indexes whose
    partial filter the query satisfies."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("stage") == "COLLSCAN":
                found.add("COLLSCAN")
            if isinstance(node.get("indexName"), str):
                found.add(node["indexName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    if "queryPlanner" in explained:
        walk(explained["queryPlanner"]["winningPlan"])
    else:
        found.update(explained.get("details", {}).get("usableVirtualIndexes", []))
    return found


def test_every_object_is_valid_for_kubernetes(rendered: list[Object]) -> None:
    validator = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is a test dependency: make install"
    )
    kinds = set()
    for obj in rendered:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # custom resources: checked below
        # strict: an unknown or misspelt field is an error, not silently dropped.
        validator.validate(obj, KUBERNETES_VERSION, strict=True)
        kinds.add(obj["kind"])
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "Secret"} <= kinds


def test_keda_objects_are_valid_for_the_keda_crds(rendered: list[Object]) -> None:
    """KEDA's CRDs as pydantic models (cloudcoil-models-keda, generated from the CRDs'
    OpenAPI schemas): required fields and types. Unknown fields are not rejected by these
    models, so the fields that matter and the references between the objects are checked
    by hand as well."""
    keda = pytest.importorskip(
        "cloudcoil.models.keda.v1alpha1",
        reason="cloudcoil-models-keda is a test dependency: make install",
    )
    checked = set()
    for obj in rendered:
        if obj["apiVersion"].startswith("keda.sh/"):
            getattr(keda, obj["kind"]).model_validate(obj)
            checked.add(obj["kind"])
    assert checked == {"ScaledObject", "TriggerAuthentication"}

    scaled = find(rendered, "ScaledObject", "embedder-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]["name"]
    find(rendered, "Deployment", target)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "mongodb"
    metadata = trigger["metadata"]
    assert {"dbName", "collection", "query", "queryValue"} <= set(metadata)
    assert all(isinstance(v, str) for v in metadata.values())  # CRD: map of strings
    assert int(metadata["queryValue"]) > 0 and int(metadata["activationQueryValue"]) >= 0
    auth = find(rendered, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "connectionString"
    secret = find(rendered, "Secret", ref["name"])
    assert ref["key"] in secret["data"]


def test_the_keda_query_is_the_workers_queue(rendered: list[Object]) -> None:
    """The scaler counts exactly the docs the workers would claim: the queue's pending
    predicate for the database, collection and target field the workers are given."""
    settings = config(rendered)
    metadata = find(rendered, "ScaledObject", "embedder-worker")["spec"]["triggers"][0]["metadata"]
    queue = QueueSpec(
        collection=settings["EMBEDDER_COLLECTION"],
        database=settings["EMBEDDER_DATABASE"],
        target_field=settings["EMBEDDER_TARGET_FIELD"],
    )
    assert (metadata["dbName"], metadata["collection"]) == (queue.database, queue.collection)
    assert json_util.loads(metadata["query"]) == queue.pending_query()


def test_gpus_secrets_drain_and_single_writer(rendered: list[Object]) -> None:
    tei = find(rendered, "StatefulSet", "tei")
    (server,) = containers(tei)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["image"].startswith("ghcr.io/huggingface/text-embeddings-inference:")
    urls = config(rendered)["EMBEDDER_TEI_URLS"].split(",")
    assert urls == [f"http://tei-{i}.tei:80" for i in range(tei["spec"]["replicas"])]

    worker = find(rendered, "Deployment", "embedder-worker")
    (container,) = containers(worker)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert "--metrics-port=9400" in container["args"]
    assert "--metrics-host=0.0.0.0" in container["args"]  # the probes come from the kubelet
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9400"
    drain = int(config(rendered)["EMBEDDER_DRAIN_TIMEOUT"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= drain + 15

    consolidator = find(rendered, "Deployment", "embedder-consolidator")
    assert consolidator["spec"]["replicas"] == 1
    assert consolidator["spec"]["strategy"]["type"] == "Recreate"

    # Secrets only by reference: no literal credential in any pod spec or config map.
    secret_keys = set(find(rendered, "Secret", "embedder-secrets")["data"])
    for obj in rendered:
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            for c in containers(obj):
                for env in c.get("env", []):
                    if env["name"] in secret_keys:
                        assert "value" not in env, (obj["metadata"]["name"], env)
    assert not secret_keys & set(config(rendered))
    assert "mongodb://" not in json.dumps([o for o in rendered if o["kind"] != "Secret"])
    for obj in rendered:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            for c in containers(obj):
                assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_the_real_secrets_file_is_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(K8S / "secrets.env")], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0


async def test_the_keda_query_counts_the_pending_docs(
    rendered: list[Object], ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    """KEDA's MongoDB scaler runs CountDocuments(query); so does this, on a seeded queue where
    some docs are done and some failed, and it agrees with `embedder status`."""
    metadata = find(rendered, "ScaledObject", "embedder-worker")["spec"]["triggers"][0]["metadata"]
    corpus = corpora.tweets(120)
    queue = await seed(mongo, ws.database, corpus, collection=metadata["collection"])
    docs = mongo[ws.database][metadata["collection"]]
    done = list(corpus.eligible)[:40]
    await docs.update_many(
        {"_id": {"$in": done}}, {"$set": {queue.target_field: {"status": "done"}}}
    )
    failed = list(corpus.bad)
    await docs.update_many(
        {"_id": {"$in": failed}}, {"$set": {queue.target_field: {"status": "failed"}}}
    )

    query = json_util.loads(metadata["query"])
    explained = await mongo[ws.database].command(
        "explain", {"count": metadata["collection"], "query": query}
    )
    used = plan_indexes(explained)
    assert queue.index_name in used and "COLLSCAN" not in used, explained

    counted = await docs.count_documents(query)

    assert counted == len(corpus.eligible) - len(done)
    status = run_python(ws.queue_command("status", "--json"))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == counted
