"""From process start to exit: what share of the fleet's capacity one ``embedder embed --once``
delivers, and where the rest goes.

In one run, on simulated GPUs (``embedder serve --backend hash``, 5 ms + 170 us per token a
batch: ``bench.sim_fleet``):

1. the capacity of the server measured alone: ``embedder autotune``'s load generator, 32-text
   requests at 2, 4, 8 and 16 in flight, the best of them (that count is the best fixed
   setting);
2. for each job size, with ``--concurrency auto`` and with the best fixed setting: a whole
   ``embedder embed --once`` process (``bench.memory_embed``: the real CLI, its MongoDB queue
   swapped for one in memory so that the queue is never the bottleneck; loading the texts is
   subtracted), timed from before it is spawned to after it is reaped. The fraction is
   ``docs / capacity / seconds``; the worker's CPU (user + system, the texts' loading
   subtracted) per 1,000 docs is beside it;
3. where the lost time went, from the phase marks the worker records in its summary JSON
   (``embedder.worker.phases``): seconds lost in each phase are its duration less the docs
   the fleet answered in it over the capacity. Imports: spawn to the runner's start (the
   interpreter, imports, the CLI). Start-up: to the first request (``/info``, the dimension
   probe, the shard check, the vector cache, the count). Ramp: to when no adaptive limit is
   in slow start. Steady: to the last request sent. End of queue: to the last answer. Finish:
   the last shard, marks and leases, to the run's return. Exit: closing the fleet and the
   cache, the summary, the interpreter's exit. Timer waits (seconds spent in poll sleeps and
   idle sink timeouts) overlap those phases and are listed apart;
4. the same on a fleet of four servers of unequal speed (1, 1, 1, 0.5: ``bench.adaptive_fleet``'s
   shape), its capacity measured with all four loaded together.

    python -m bench.start_to_exit [--docs 2000,20000] [--large] [--fleet-docs 20000]

``--large`` adds a 200,000-doc job (about 11 minutes per setting on one server). MongoDB is not
measured: its start-up checks (three round trips) are skipped, and its claims and marks cost
nothing here (``bench.mongo_round_trips`` counts them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.sim_fleet import machine, running_fleet
from embedder.devtools.samples import generate
from embedder.fleet.endpoint import EndpointClient
from embedder.fleet.protocol import EmbedOptions
from embedder.ops import autotune
from tests.support.servers import ROOT

BATCH = 32
LEVELS = (2, 4, 8, 16)  # requests in flight per server, for the capacity
FLEET_SPEEDS = (1.0, 1.0, 1.0, 0.5)
PHASES = ("imports", "start-up", "ramp", "steady", "end of queue", "finish", "exit")
RUN_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Capacity:
    docs_per_s: float
    per_server: int  # requests in flight per server at the best


@dataclass
class Run:
    docs: int
    setting: str
    seconds: float
    fraction: float
    cpu_per_1k: float
    lost: dict[str, float]
    waits: dict[str, Any]


def corpus(count: int) -> list[str]:
    """Tweet-like texts, each distinct (a repeated text would be re-used, not embedded)."""
    return [f"{s.text} {i}" for i, s in enumerate(generate(count, seed=3))]


async def capacity(
    urls: list[str], texts: list[str], warmup_s: float, duration_s: float
) -> Capacity:
    """The fleet's best docs/s under the load generator alone, over ``LEVELS``."""
    async with httpx.AsyncClient(timeout=600) as http:
        clients = [EndpointClient(u, http) for u in urls]
        best: Capacity | None = None
        for level in LEVELS:
            cell = await autotune.measure_cell(
                clients,
                autotune.cycle_batches(texts, BATCH),
                lambda _texts, header: header or 0,
                batch_size=BATCH,
                concurrency=level * len(urls),
                warmup_s=warmup_s,
                duration_s=duration_s,
                options=EmbedOptions(),
            )
            if best is None or cell.docs_per_s > best.docs_per_s:
                best = Capacity(cell.docs_per_s, level)
    assert best is not None
    return best


def run_cli(
    texts_file: Path, docs: int, urls: list[str], *, concurrency: str, rate: float, root: Path
) -> Run:
    """One ``embedder embed --once`` process, start to exit."""
    root.mkdir()
    times, summary = root / "times.json", root / "summary.json"
    command = [
        *(sys.executable, "-m", "bench.memory_embed", str(texts_file), str(times), "embed"),
        *("--collection", "bench", "--tei-urls", ",".join(urls), "--once"),
        *("--concurrency", concurrency, "--batch-size", str(BATCH)),
        *("--output-dir", str(root / "shards"), "--hot-dir", str(root / "hot")),
        *("--summary-json", str(summary)),
    ]
    with (root / "worker.log").open("wb") as log:
        spawned = time.time()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        exited = time.time()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        tail = (root / "worker.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the worker exited {process.returncode}; its log ends:\n{tail}")
    began = orjson.loads(times.read_bytes())
    result = orjson.loads(summary.read_bytes())
    if result["embedded"] != docs:
        raise RuntimeError(f"{result['embedded']} of {docs} docs embedded")
    load_s = began["loaded"] - began["began"]
    seconds = exited - spawned - load_s
    cpu = usage.ru_utime + usage.ru_stime - began["load_cpu"]
    marks = {name: (m["at"], m["answered"]) for name, m in result["phases"]["marks"].items()}
    return Run(
        docs,
        "auto" if concurrency == "auto" else f"fixed {concurrency}",
        seconds,
        docs / rate / seconds,
        1000 * cpu / docs,
        lost_by_phase(marks, spawned + load_s, exited, rate),
        result["phases"]["waits"],
    )


def lost_by_phase(
    marks: dict[str, tuple[float, int]], spawned: float, exited: float, rate: float
) -> dict[str, float]:
    """Each phase's seconds less the seconds its answered docs take at ``rate``."""
    last_sent = marks["last_sent"]
    # A short job may send its last request before the limit leaves slow start.
    ramped = min(marks.get("ramped", last_sent), last_sent)
    bounds = [
        (spawned, 0),
        marks["started"],
        marks["first_sent"],
        ramped,
        last_sent,
        marks["last_answered"],
        marks["finished"],
        (exited, marks["last_answered"][1]),
    ]
    return {
        name: (end - start) - (end_docs - start_docs) / rate
        for name, (start, start_docs), (end, end_docs) in zip(
            PHASES, bounds[:-1], bounds[1:], strict=True
        )
    }


def jobs(
    speeds: tuple[float, ...],
    sizes: list[int],
    texts: list[str],
    args: argparse.Namespace,
    root: Path,
) -> tuple[Capacity, list[Run]]:
    with running_fleet(speeds, root) as urls:
        rate = asyncio.run(capacity(urls, texts[:4000], args.warmup, args.capacity_seconds))
        runs = []
        for size in sizes:
            texts_file = root / f"texts-{size}.json"
            texts_file.write_bytes(orjson.dumps(texts[:size]))
            for setting in ("auto", str(args.fixed or rate.per_server)):
                where = root / f"run-{size}-{setting}"
                runs.append(
                    run_cli(
                        texts_file,
                        size,
                        urls,
                        concurrency=setting,
                        rate=rate.docs_per_s,
                        root=where,
                    )
                )
    return rate, runs


def report(title: str, rate: Capacity, runs: list[Run]) -> None:
    print(f"\n{title}")
    print(
        f"capacity alone: {rate.docs_per_s:,.1f} docs/s "
        f"(batch {BATCH}, {rate.per_server} requests in flight per server)"
    )
    print("| docs | setting | seconds | docs/s | of capacity | CPU s per 1,000 docs |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r.docs} | {r.setting} | {r.seconds:.2f} | {r.docs / r.seconds:,.1f} | "
            f"{r.fraction:.3f} | {r.cpu_per_1k:.3f} |"
        )
    print("seconds lost against capacity, by phase:")
    print("| docs | setting | " + " | ".join(PHASES) + " | all | timer waits |")
    print("|---:|---|" + "---:|" * (len(PHASES) + 1) + "---|")
    for r in runs:
        waits = ", ".join(
            f"{name} {w['count']}x {w['seconds']:.2f}s" for name, w in sorted(r.waits.items())
        )
        cells = " | ".join(f"{r.lost[p]:.2f}" for p in PHASES)
        print(f"| {r.docs} | {r.setting} | {cells} | {sum(r.lost.values()):.2f} | {waits or '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", default="2000,20000", help="job sizes on one server")
    parser.add_argument("--large", action="store_true", help="add a 200,000-doc job")
    parser.add_argument("--fleet-docs", type=int, default=20_000, help="0: no fleet runs")
    parser.add_argument("--fixed", type=int, help="the fixed setting (default: capacity's best)")
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    sizes = [int(n) for n in args.docs.split(",")] + ([200_000] if args.large else [])
    texts = corpus(max([*sizes, args.fleet_docs, 4000]))
    print(machine())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "one").mkdir()
        rate, runs = jobs((1.0,), sizes, texts, args, tmp / "one")
        report("one simulated server (5 ms + 170 us per token a batch)", rate, runs)
        if args.fleet_docs:
            (tmp / "fleet").mkdir()
            rate, runs = jobs(FLEET_SPEEDS, [args.fleet_docs], texts, args, tmp / "fleet")
            report(f"four simulated servers, speeds {FLEET_SPEEDS}", rate, runs)


if __name__ == "__main__":
    main()
