"""Run the embedder on a Ray cluster: one actor per GPU, each an embedding server and its worker.

``python -m embedder.clusters.ray_actors --address auto --actors 8 --collection tweets`` (or with no
``--actors``: one per GPU of the cluster). Every actor holds one GPU (``num_gpus=1``; CPUs
with ``--cpus-per-actor`` for tests), starts ``embedder serve`` on it (``--backend torch``, or
``hash`` for tests), waits for its ``/health`` and runs ``embedder embed --once`` against it,
on the same MongoDB queue as every other actor. Ray restarts an actor that dies
(``max_restarts``) and retries its run; the queue makes the retry idempotent. Each actor
exports its worker's progress as Ray metrics (``embedder_ray_docs_embedded``,
``embedder_ray_docs_failed``, tagged by actor), shown in Ray's dashboard and scraped from
Ray's Prometheus endpoint; the driver logs `embedder status` every ``--status-interval``.

The queue settings come from the worker's ``EMBEDDER_*`` variables in the driver's
environment; they reach the actors as constructor arguments, not as a runtime environment,
which Ray's dashboard would show (``EMBEDDER_MONGO_URI`` holds a password).
Needs ``pip install "embedder[ray]"``.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("embedder.clusters.ray_actors")

_REPORT_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ActorSettings:
    """What one actor needs: how to start its server and its worker, and where to log."""

    backend: str
    server_args: tuple[str, ...]
    env: dict[str, str]
    log_dir: Path
    health_timeout: float = 900.0
    command: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m", "embedder.cli"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _progress(metrics_url: str) -> dict[str, float]:
    """The worker's embedded and failed counts from its own /metrics."""
    text = httpx.get(metrics_url, timeout=5).text
    totals = {"embedded": 0.0, "failed": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "embedder_docs_embedded_total":
                totals["embedded"] += sample.value
            elif sample.name == "embedder_docs_failed_total":
                totals["failed"] += sample.value
    return totals


class EmbedderActor:
    """One GPU's server and worker. Ray instantiates it again after a crash."""

    def __init__(self, index: int, settings: ActorSettings) -> None:
        from ray.util.metrics import Gauge

        self.index = index
        self.settings = settings
        self.tags = {"actor": str(index)}
        self.embedded = Gauge(
            "embedder_ray_docs_embedded", "Docs embedded by this actor's worker", ("actor",)
        )
        self.failed = Gauge(
            "embedder_ray_docs_failed", "Docs failed for good by this actor's worker", ("actor",)
        )
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        (settings.log_dir / f"actor-{index}.pid").write_text(str(os.getpid()))

    def _start(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        handle = (self.settings.log_dir / log_name).open("ab")
        env = {**os.environ, **self.settings.env, "PYTHONUNBUFFERED": "1"}
        # When the actor dies, Ray (2.60) sends its orphaned children one SIGTERM, so the worker
        # drains as on any SIGTERM. A death signal of our own (prctl PDEATHSIG) was tried: it
        # made a second SIGTERM, which makes the worker exit without draining.
        return subprocess.Popen(
            [*self.settings.command, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def run(self) -> int:
        """Serve, wait for health, embed until the queue is empty; the worker's exit code."""
        port, metrics_port = _free_port(), _free_port()
        server = self._start(
            [
                "serve",
                "--backend",
                self.settings.backend,
                "--port",
                str(port),
                *self.settings.server_args,
            ],
            f"server-{self.index}.log",
        )
        try:
            self._wait_healthy(server, f"http://127.0.0.1:{port}/health")
            worker = self._start(
                [
                    "embed",
                    "--once",
                    "--tei-urls",
                    f"http://127.0.0.1:{port}",
                    "--metrics-port",
                    str(metrics_port),
                ],
                f"worker-{self.index}.log",
            )
            while worker.poll() is None:
                self._report(f"http://127.0.0.1:{metrics_port}/metrics")
                try:
                    worker.wait(_REPORT_INTERVAL_S)
                except subprocess.TimeoutExpired:
                    continue
            return worker.returncode
        finally:
            server.terminate()
            server.wait()

    def _wait_healthy(self, server: subprocess.Popen[bytes], url: str) -> None:
        deadline = time.monotonic() + self.settings.health_timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"actor {self.index}: the server exited ({server.returncode})")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"actor {self.index}: the server is not healthy in time")

    def _report(self, metrics_url: str) -> None:
        try:
            progress = _progress(metrics_url)
        except httpx.HTTPError:
            return  # the worker has not opened its metrics yet
        self.embedded.set(progress["embedded"], tags=self.tags)
        self.failed.set(progress["failed"], tags=self.tags)


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("EMBEDDER_")}


def _status_line(command: tuple[str, ...]) -> str:
    done = subprocess.run(
        [*command, "status"], check=False, capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.splitlines()
    return lines[1].strip() if done.returncode == 0 and len(lines) > 1 else done.stderr.strip()


@click.command()
@click.option("--address", default="auto", show_default=True, help="Ray cluster address.")
@click.option("--actors", type=int, help="Actors to start [default: one per GPU in the cluster].")
@click.option(
    "--cpus-per-actor",
    type=float,
    help="Hold CPUs instead of one GPU per actor (clusters without GPUs, tests).",
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "hash", "onnx"]),
    default="torch",
    show_default=True,
    help="The embedding server each actor starts (`embedder serve --backend`).",
)
@click.option("--server-args", default="", help="Extra `embedder serve` flags, one string.")
@click.option("--max-restarts", default=5, show_default=True, help="Restarts per actor.")
@click.option("--log-dir", type=click.Path(path_type=Path), default=Path("logs/ray"))
@click.option("--status-interval", default=30.0, show_default=True)
def main(
    *,
    address: str,
    actors: int | None,
    cpus_per_actor: float | None,
    backend: str,
    server_args: str,
    max_restarts: int,
    log_dir: Path,
    status_interval: float,
) -> None:
    """One embedding server and its worker per GPU of a Ray cluster, on one MongoDB queue."""
    import ray

    # By reference, not by value: the actors import this module (run as __main__ it would
    # be pickled whole).
    raycluster = importlib.import_module("embedder.clusters.ray_actors")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import embedder

    # The actors import this module; on a cluster without the package installed, the
    # driver's copy travels by PYTHONPATH (the cluster shares the file system, or use a
    # runtime_env working_dir).
    source_root = str(Path(embedder.__file__).resolve().parent.parent)
    python_path = os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p)
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": python_path}})
    count = actors or int(ray.cluster_resources().get("GPU", 0))
    if count < 1:
        raise click.UsageError("no GPU in the cluster: give --actors and --cpus-per-actor")
    resources: dict[str, Any] = (
        {"num_cpus": cpus_per_actor, "num_gpus": 0} if cpus_per_actor else {"num_gpus": 1}
    )
    settings = raycluster.ActorSettings(
        backend=backend,
        server_args=tuple(server_args.split()),
        env=_worker_env(),
        log_dir=log_dir.resolve(),
    )
    remote = ray.remote(raycluster.EmbedderActor).options(
        max_restarts=max_restarts, max_task_retries=max_restarts, **resources
    )
    handles = [remote.remote(i, settings) for i in range(count)]
    pending = {handle.run.remote(): i for i, handle in enumerate(handles)}
    log.info("%d actor(s) started; logs in %s", count, settings.log_dir)
    codes: dict[int, int] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=status_interval)
        for ref in ready:
            index = pending.pop(ref)
            try:
                codes[index] = ray.get(ref)
            except ray.exceptions.RayError as exc:  # out of restarts, or the run raised
                log.error("actor %d failed: %s", index, exc)
                codes[index] = 1
                continue
            log.info("actor %d: worker exited with %d", index, codes[index])
        if not ready:
            log.info("status: %s", _status_line(settings.command))
    log.info("status: %s", _status_line(settings.command))
    sys.exit(0 if all(code == 0 for code in codes.values()) else 1)


if __name__ == "__main__":
    main()
