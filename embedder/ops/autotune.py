"""``embedder autotune``: sweep client batch size x concurrency against a TEI fleet.

Concurrency is per endpoint, as ``embed --concurrency`` means it: each cell keeps
``concurrency`` x endpoints requests of ``batch_size`` real texts in flight across the fleet
(each to the endpoint with the fewest in flight, as the worker does), first for a warm-up,
then for a measured window. The report ends with the ``embed`` command line of the best cell.
Requests are not retried: an error is counted, as the seed's own benchmark counted them, and
its slot pauses briefly before the next request. Requests still in flight when the window
closes are cancelled, and their latency so far enters the percentiles as a lower bound, so a
queue longer than the window still shows in p95 instead of vanishing from it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

from embedder.errors import ConfigurationError, EndpointError
from embedder.fleet.endpoint import EndpointClient
from embedder.fleet.protocol import EmbedOptions, ModelIdentity, ServerInfo, ServerKind

ERROR_PAUSE_S = 0.1


@dataclass(frozen=True, slots=True)
class SweepSettings:
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    warmup_s: float = 5.0
    duration_s: float = 20.0
    p95_slo_s: float = 10.0
    early_stop: bool = True
    # A row stops once the next concurrency has added less than this to docs/s twice running
    # while p95 grew: beyond that point, more in flight only queues.
    plateau_gain: float = 0.05

    def __post_init__(self) -> None:
        if not self.batch_sizes or not self.concurrencies:
            raise ConfigurationError("autotune needs at least one batch size and one concurrency")
        if min(self.batch_sizes) < 1 or min(self.concurrencies) < 1:
            raise ConfigurationError("batch sizes and concurrencies must be at least 1")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.p95_slo_s <= 0:
            raise ConfigurationError("--duration and --p95-slo must be positive")


@dataclass(slots=True)
class Cell:
    batch_size: int
    concurrency: int
    docs_per_s: float
    tokens_per_s: float
    p50_s: float
    p95_s: float
    errors: int
    total_time_s: float
    requests: int
    errors_by_status: dict[str, int] = field(default_factory=dict)

    def meets(self, slo_s: float) -> bool:
        return self.errors == 0 and self.p95_s <= slo_s


@dataclass(slots=True)
class AutotuneReport:
    settings: SweepSettings
    endpoints: list[str]
    model: str
    max_client_batch_size: int
    max_concurrent_requests: int
    max_batch_tokens: int
    cells: list[Cell]
    skipped: list[str]
    best: Cell | None
    advice: list[str]
    # The `embed` command line that runs the best setting; set by whoever knows the queue.
    embed_command: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "endpoints": self.endpoints,
            "model": self.model,
            "server": {
                "max_client_batch_size": self.max_client_batch_size,
                "max_concurrent_requests": self.max_concurrent_requests,
                "max_batch_tokens": self.max_batch_tokens,
            },
            "cells": [_finite(asdict(c)) for c in self.cells],
            "skipped": self.skipped,
            "best": _finite(asdict(self.best)) if self.best else None,
            "advice": self.advice,
            "embed_command": self.embed_command,
        }


def _finite(cell: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a cell where nothing succeeded has no latency, written as null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in cell.items()
    }


# --- one cell ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    opens_at: float
    closes_at: float
    docs: int = 0
    tokens: int = 0
    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def counts(self, at: float) -> bool:
        return self.opens_at <= at <= self.closes_at


class _Balancer:
    """The endpoint with the fewest requests in flight."""

    def __init__(self, clients: Sequence[EndpointClient]) -> None:
        self._inflight = dict.fromkeys(clients, 0)

    def take(self) -> EndpointClient:
        client = min(self._inflight, key=self._inflight.__getitem__)
        self._inflight[client] += 1
        return client

    def give_back(self, client: EndpointClient) -> None:
        self._inflight[client] -= 1


async def measure_cell(
    clients: Sequence[EndpointClient],
    batches: Iterator[list[str]],
    tokens_of: Callable[[list[str], int | None], int],
    *,
    batch_size: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    options: EmbedOptions,
) -> Cell:
    started = time.perf_counter()
    tally = _Tally(started + warmup_s, started + warmup_s + duration_s)
    balancer = _Balancer(clients)
    slots = concurrency * len(clients)  # ``concurrency`` per endpoint
    in_flight_since: list[float | None] = [None] * slots

    async def one_client(slot: int) -> None:
        while time.perf_counter() < tally.closes_at:
            texts = next(batches)
            client = balancer.take()
            began = in_flight_since[slot] = time.perf_counter()
            try:
                embedded = await client.embed(texts, options)
            except EndpointError as exc:
                if tally.counts(time.perf_counter()):
                    key = str(exc.status or exc.kind)
                    tally.errors[key] = tally.errors.get(key, 0) + 1
                    tally.requests += 1
                # A refused request comes back at once: without a pause this slot would
                # hammer the server with retries and count thousands of errors.
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            finally:
                in_flight_since[slot] = None
                balancer.give_back(client)
            done = time.perf_counter()
            if tally.counts(done):
                tally.requests += 1
                tally.docs += len(texts)
                tally.tokens += tokens_of(texts, embedded.tokens)
                tally.latencies.append(done - began)

    tasks = [asyncio.create_task(one_client(slot)) for slot in range(slots)]
    await asyncio.sleep(max(0.0, tally.closes_at - time.perf_counter()))
    # What is still in flight has waited at least this long: a lower bound that keeps a queue
    # longer than the window in the percentiles.
    now = time.perf_counter()
    tally.latencies.extend(now - since for since in in_flight_since if since is not None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = np.array(tally.latencies or [math.nan])
    return Cell(
        batch_size=batch_size,
        concurrency=concurrency,
        docs_per_s=tally.docs / duration_s,
        tokens_per_s=tally.tokens / duration_s,
        p50_s=float(np.percentile(latencies, 50)),
        p95_s=float(np.percentile(latencies, 95)),
        errors=sum(tally.errors.values()),
        total_time_s=time.perf_counter() - started,
        requests=tally.requests,
        errors_by_status=dict(tally.errors),
    )


# --- the sweep --------------------------------------------------------------------------


def cycle_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[str]]:
    """Batches of consecutive texts, wrapping around the sample forever."""
    source = itertools.cycle(texts)
    while True:
        yield list(itertools.islice(source, batch_size))


def plateaued(row: Sequence[Cell], gain: float) -> bool:
    """The last two steps each added less than ``gain`` to docs/s while p95 grew."""
    if len(row) < 3:
        return False
    steps = list(itertools.pairwise(row[-3:]))
    return all(b.docs_per_s < a.docs_per_s * (1 + gain) and b.p95_s > a.p95_s for a, b in steps)


def choose_best(cells: Sequence[Cell], slo_s: float) -> Cell | None:
    """The fastest setting that meets the SLO without errors; among those within 3% of it,
    the one with the lowest p95 (the same work with a shorter queue)."""
    meeting = [c for c in cells if c.meets(slo_s)]
    if not meeting:
        return None
    top = max(c.docs_per_s for c in meeting)
    return min((c for c in meeting if c.docs_per_s >= top * 0.97), key=lambda c: c.p95_s)


def advise(cells: Sequence[Cell], slo_s: float, *, max_concurrent_requests: int) -> list[str]:
    """Why no setting meets the SLO, and what to change."""
    advice = [f"no setting meets p95 <= {slo_s:g} s with zero errors"]
    clean = [c for c in cells if c.errors == 0]
    failing = [c for c in cells if c.errors]
    if failing:
        first = min(failing, key=lambda c: c.batch_size * c.concurrency)
        advice.append(
            f"errors from batch {first.batch_size} x concurrency {first.concurrency} up "
            f"({first.errors_by_status}): TEI refuses a request (429) when its inputs find no "
            f"free permit; keep batch x concurrency (per endpoint) under its "
            f"{max_concurrent_requests} permits, or raise the server's --max-concurrent-requests"
        )
    if clean:
        fastest = min(clean, key=lambda c: c.p95_s)
        advice.append(
            f"the lowest p95 without errors is {fastest.p95_s:.2f} s (batch "
            f"{fastest.batch_size}, concurrency {fastest.concurrency})"
        )
        alone = [c for c in clean if c.concurrency == min(x.concurrency for x in clean)]
        if min(c.p95_s for c in alone) > slo_s:
            advice.append(
                "even the least loaded setting is over the SLO, so this is the time to compute "
                "one request, not queueing: send smaller client batches (--batch-size), and "
                "let the server cut smaller batches (a lower --max-batch-tokens) or add GPUs"
            )
        else:
            advice.append(
                "the fleet meets the SLO only lightly loaded: at the concurrency that fills the "
                "GPUs, the queue is too long; lower the client batch or the server's "
                "--max-batch-tokens so each batch finishes sooner, or relax --p95-slo"
            )
    return advice


def markdown_table(cells: Sequence[Cell]) -> str:
    lines = [
        "| Batch Size | Concurrency | Docs/s | Tok/s | p50 (s) | p95 (s) | Errors | Total Time (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c.batch_size} | {c.concurrency} | {c.docs_per_s:,.1f} | {c.tokens_per_s:,.0f} | "
        f"{c.p50_s:.3f} | {c.p95_s:.3f} | {c.errors} | {c.total_time_s:.1f} |"
        for c in cells
    ]
    return "\n".join(lines)


def report_markdown(report: AutotuneReport) -> str:
    s = report.settings
    parts = [
        "# embedder autotune",
        "",
        f"Fleet: {len(report.endpoints)} endpoint(s) serving {report.model}; server "
        f"max_client_batch_size {report.max_client_batch_size}, max_concurrent_requests "
        f"{report.max_concurrent_requests}, max_batch_tokens {report.max_batch_tokens}.",
        f"Each cell: {s.warmup_s:g} s warm-up, {s.duration_s:g} s measured. "
        f"SLO: p95 <= {s.p95_slo_s:g} s with zero errors. Concurrency: requests in flight "
        "per endpoint, as `embed --concurrency` means it.",
        "",
        markdown_table(report.cells),
        "",
    ]
    parts += [f"- skipped: {line}" for line in report.skipped]
    if report.best:
        b = report.best
        parts.append(
            f"**Best: batch {b.batch_size}, concurrency {b.concurrency}**: "
            f"{b.docs_per_s:,.1f} docs/s, p95 {b.p95_s:.3f} s."
        )
        cap = max(1, report.max_concurrent_requests // 2)
        if b.batch_size * b.concurrency > cap:
            parts.append(
                f"- the worker keeps inputs in flight under half the server's permits ({cap}), "
                f"so it runs this setting with {cap} inputs in flight per endpoint"
            )
    parts += [f"- {line}" for line in report.advice]
    if report.embed_command:
        parts += ["", "Run it:", "", f"    {report.embed_command}"]
    return "\n".join(parts) + "\n"


def embed_command(report: AutotuneReport, queue_args: Sequence[str] = ()) -> str | None:
    """``embedder embed`` with the best cell's batch size and concurrency (no secrets: the
    API key and the MongoDB URI come from the environment)."""
    if report.best is None:
        return None
    return shlex.join(
        [
            *("embedder", "embed", *queue_args),
            *("--tei-urls", ",".join(report.endpoints)),
            *("--batch-size", str(report.best.batch_size)),
            *("--concurrency", str(report.best.concurrency)),
        ]
    )


async def sweep(
    urls: Sequence[str],
    texts: Sequence[str],
    settings: SweepSettings,
    *,
    options: EmbedOptions | None = None,
    api_key: str | None = None,
    request_timeout_s: float = 600.0,
    on_cell: Callable[[Cell], None] | None = None,
) -> AutotuneReport:
    if not texts:
        raise ConfigurationError("autotune needs texts to send; the sample is empty")
    options = options or EmbedOptions()
    timeout = httpx.Timeout(request_timeout_s, connect=5.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        clients = [EndpointClient(u, http, api_key=api_key) for u in urls]
        infos = [_tei_limits(c.url, await c.info()) for c in clients]
        if len({i.identity for i in infos}) > 1:
            raise ConfigurationError("the endpoints serve different models")
        server_batch = min(i.max_client_batch_size for i in infos)
        counted = _TokenCounter()
        await counted.prepare(clients[0], texts, server_batch, options)
        cells: list[Cell] = []
        skipped = [
            f"batch {b}: over the servers' max_client_batch_size {server_batch}"
            for b in settings.batch_sizes
            if b > server_batch
        ]
        for batch_size in [b for b in settings.batch_sizes if b <= server_batch]:
            row: list[Cell] = []
            for concurrency in settings.concurrencies:
                cell = await measure_cell(
                    clients,
                    cycle_batches(texts, batch_size),
                    counted.tokens,
                    batch_size=batch_size,
                    concurrency=concurrency,
                    warmup_s=settings.warmup_s,
                    duration_s=settings.duration_s,
                    options=options,
                )
                row.append(cell)
                if on_cell:
                    on_cell(cell)
                if settings.early_stop and plateaued(row, settings.plateau_gain):
                    rest = [c for c in settings.concurrencies if c > concurrency]
                    if rest:
                        skipped.append(
                            f"batch {batch_size}, concurrency {', '.join(map(str, rest))}: "
                            "throughput had plateaued while latency grew"
                        )
                    break
            cells += row
    best = choose_best(cells, settings.p95_slo_s)
    permits = min(i.max_concurrent_requests for i in infos)
    advice = [] if best else advise(cells, settings.p95_slo_s, max_concurrent_requests=permits)
    return AutotuneReport(
        settings=settings,
        endpoints=[c.url for c in clients],
        model=f"{infos[0].model_id}@{infos[0].model_sha}",
        max_client_batch_size=server_batch,
        max_concurrent_requests=permits,
        max_batch_tokens=min(i.max_batch_tokens for i in infos),
        cells=cells,
        skipped=skipped,
        best=best,
        advice=advice,
    )


class _TokenCounter:
    """Tokens per request from x-compute-tokens; where the server does not send it, from
    /tokenize over the sample, asked once before the sweep."""

    def __init__(self) -> None:
        self._per_text: dict[str, int] = {}

    async def prepare(
        self, client: EndpointClient, texts: Sequence[str], batch: int, options: EmbedOptions
    ) -> None:
        probe = await client.embed(list(texts[:batch]), options)
        if probe.tokens is not None:
            return
        distinct = list(dict.fromkeys(texts))
        for start in range(0, len(distinct), batch):
            chunk = distinct[start : start + batch]
            self._per_text.update(zip(chunk, await client.token_counts(chunk), strict=True))

    def tokens(self, texts: list[str], header: int | None) -> int:
        if header is not None:
            return header
        return sum(self._per_text.get(t, 0) for t in texts)


@dataclass(frozen=True, slots=True)
class _TeiLimits:
    identity: ModelIdentity
    model_id: str
    model_sha: str | None
    max_client_batch_size: int
    max_concurrent_requests: int
    max_batch_tokens: int


def _tei_limits(url: str, info: ServerInfo) -> _TeiLimits:
    """The limits the sweep reads; it counts tokens with TEI's /tokenize, so TEI only."""
    if (
        info.kind is not ServerKind.TEI
        or info.max_client_batch_size is None
        or info.max_concurrent_requests is None
        or info.max_batch_tokens is None
    ):
        raise ConfigurationError(f"autotune measures TEI endpoints; {url} is {info.kind}")
    return _TeiLimits(
        info.identity,
        info.model_id,
        info.model_sha,
        info.max_client_batch_size,
        info.max_concurrent_requests,
        info.max_batch_tokens,
    )
