"""``embedder embed`` as a whole process, its MongoDB queue swapped for one in memory.

    python -m bench.memory_embed TEXTS.json TIMES.json embed --collection c --once ...

For ``bench.start_to_exit``: everything of a real ``embedder embed`` run happens in this process
(the interpreter's start, the imports, the CLI's parsing and settings, the runner's set-up with
``/info``, the dimension probe, the shard check and the vector cache, the worker, the shard
writer, closing, exiting) except MongoDB: its start-up checks are skipped and the queue is
``bench.memory_queue.MemoryWorkQueue`` over the texts of TEXTS.json, so the queue is never the
bottleneck. Loading those texts is not part of a real run: the process records when it began
and when the texts were loaded, and the CPU that took, in TIMES.json, for the benchmark to
subtract.
"""

from __future__ import annotations

import time
from typing import Any

BEGAN = time.time()  # before any import but this one: as early as the module can see
BEGAN_CPU = time.process_time()


def main(argv: list[str]) -> None:
    from pathlib import Path
    from types import SimpleNamespace

    import orjson

    texts_path, times_path, cli_args = Path(argv[0]), Path(argv[1]), argv[2:]
    texts = orjson.loads(texts_path.read_bytes())
    times = {"began": BEGAN, "loaded": time.time(), "load_cpu": time.process_time() - BEGAN_CPU}
    times_path.write_bytes(orjson.dumps(times))

    from bench.memory_queue import MemoryWorkQueue
    from embedder import cli
    from embedder.worker import runner

    async def nothing(*_: object, **__: object) -> None:
        return None

    class NoClient:
        async def close(self) -> None:
            return None

    def memory_queue(_client: object, _spec: object, *, claim_size: int, **_: object) -> Any:
        return MemoryWorkQueue(texts, claim_size=claim_size)

    # The runner's MongoDB, and nothing else, replaced.
    vars(runner).update(
        mongo=SimpleNamespace(
            connect=lambda *_, **__: NoClient(),
            check_reachable=nothing,
            check_indexes=nothing,
            check_target_field=nothing,
        ),
        MongoWorkQueue=memory_queue,
        why_nothing_pending=nothing,
        record_output=nothing,
    )
    try:
        cli.main(cli_args)
    finally:  # click ends by raising SystemExit: when the CLI was done, before Python's exit
        times["returned"] = time.time()
        times_path.write_bytes(orjson.dumps(times))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
