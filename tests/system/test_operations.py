"""Operating it (issue 5): a real Prometheus scraping a live run, the Grafana dashboard
against the metrics really exported, and the shipped Prometheus and compose files checked by
their own tools (Debian's prometheus and docker-compose packages; `.ci/run` installs them)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from tests.support import corpus as corpora
from tests.support.servers import ROOT, FaultTei, free_port
from tests.support.worker import Workspace, seed

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "embedder.json"
DOCUMENTED = [  # the series the README and the dashboard promise
    "embedder_docs_embedded_total",
    "embedder_docs_marked_total",
    "embedder_docs_failed_total",
    "embedder_tokens_total",
    "embedder_requests_total",
    "embedder_request_duration_seconds_bucket",
    "embedder_request_errors_total",
    "embedder_retries_total",
    "embedder_inflight_requests",
    "embedder_inflight_inputs",
    "embedder_concurrency_limit",
    "embedder_endpoint_up",
    "embedder_batch_size_bucket",
    "embedder_shards_written_total",
    "embedder_shard_bytes_total",
    "embedder_mark_duration_seconds_bucket",
    "embedder_leases",
    "embedder_queue_pending",
    "embedder_queue_done",
    "embedder_texts_sent_total",
    "embedder_texts_reused_total",
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: `.ci/run` installs it (apt-get install prometheus docker-compose)"
        )
    return path


def _exported(exposition: str) -> set[str]:
    """Every series name a scrape can hold: samples, and the families declared by TYPE lines."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.add(family)
            if kind == "histogram":
                names.update(f"{family}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_promtool_accepts_the_config_and_the_alert_rules() -> None:
    done = subprocess.run(
        [_tool("promtool"), "check", "config", "deploy/prometheus/prometheus.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout + done.stderr


def test_compose_files_are_valid(tmp_path: Path) -> None:
    compose = _tool("docker-compose")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # what an operator starts from
    for cwd, args in ((tmp_path, []), (ROOT, ["-f", "deploy/tei/docker-compose.yml"])):
        done = subprocess.run(
            [compose, *args, "config", "-q"], cwd=cwd, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr


async def test_prometheus_scrapes_a_live_run_and_the_dashboard_matches_it(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    tmp_path: Path,
) -> None:
    prometheus = _tool("prometheus")
    # Slow answers and small batches: the run lasts long enough to be seen moving, and one
    # endpoint refuses every third request so that error and retry series exist too.
    tei = tei_factory("--dimension", "32", "--faults", '{"delay_s": 0.3}')
    flaky = tei_factory(
        "--dimension",
        "32",
        "--faults",
        '{"delay_s": 0.3, "fail_every": 3, "fail_status": 429, "after": 1}',
    )
    await seed(mongo, ws.database, corpora.tweets(300))
    metrics_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: embedder, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}]\n"
    )
    scraper = await asyncio.create_subprocess_exec(
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    worker = ws.popen(
        [tei.url, flaky.url],
        "--metrics-port",
        str(metrics_port),
        "--claim-size",
        "20",
        "--batch-size",
        "4",
        "--shard-rows",
        "40",
        "--concurrency",
        "1",
        "--lease-ttl",
        "3",
    )
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"
    try:
        seen = await _values_seen(api, "embedder_docs_embedded_total", wanted=3)
        assert len(seen) >= 2 and seen[-1] > seen[0], f"the series never moved: {seen}"
        assert seen == sorted(seen), f"a counter went down: {seen}"
        names = await _series_names(api)
        async with httpx.AsyncClient() as http:
            exposition = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            tei_exposition = (await http.get(tei.url + "/metrics")).text
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 60)
        scraper.terminate()
        await scraper.wait()

    missing = [name for name in DOCUMENTED if name not in names]
    assert not missing, f"Prometheus never received {missing}"
    exported = _exported(exposition) | _exported(tei_exposition)
    used = set(re.findall(r"\b((?:embedder|te)_[a-z_]+)\b", _dashboard_queries()))
    assert used, "the dashboard queries nothing"
    assert not used - exported, (
        f"the dashboard queries metrics nobody exports: {sorted(used - exported)}"
    )


def _dashboard_queries() -> str:
    dashboard = json.loads(DASHBOARD.read_text())
    return "\n".join(t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []))


async def _values_seen(api: str, query: str, *, wanted: int) -> list[float]:
    """The distinct values Prometheus answers for ``query``, in the order they came, until
    ``wanted`` of them were seen or 90 s passed: the caller judges them."""
    seen: list[float] = []
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + 90
        while len(seen) < wanted and time.monotonic() < deadline:
            try:
                answer = (await http.get(f"{api}/query", params={"query": query})).json()
            except httpx.HTTPError:
                answer = {}
            results = answer.get("data", {}).get("result", [])
            if results and (value := float(results[0]["value"][1])) not in seen[-1:]:
                seen.append(value)
            await asyncio.sleep(0.5)
    return seen


async def _series_names(api: str) -> set[str]:
    async with httpx.AsyncClient() as http:
        answer = (await http.get(f"{api}/label/__name__/values")).json()
    return set(answer["data"])
