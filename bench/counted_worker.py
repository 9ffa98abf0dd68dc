"""The ``embedder`` CLI with every MongoDB command counted, for ``bench.queue_scale``.

    python -m bench.counted_worker COUNTS.json embed --collection ... --once

With ``--wait``, the process imports everything, creates COUNTS.json.ready, and starts the CLI
when a line arrives on its stdin, so that a run's workers start together, not an import apart.

A pymongo ``CommandListener`` registered before the CLI creates its client sees every command
the process sends; at exit the counts go to COUNTS.json, so each worker process of a run
reports its own. A claim conflict is a ``findAndModify`` whose answer holds no document: the
control document had changed under a compare-and-set (or a take-over lost its race).
"""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pymongo import monitoring

from embedder import cli


@dataclass
class Counts:
    """What one process sent: commands by ``name collection``, and the ones that lost a race."""

    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    cas_attempts: int = 0  # findAndModify on the control document's version
    cas_conflicts: int = 0  # ... that matched no document: another worker wrote first
    other_fam_misses: int = 0  # other findAndModify with no document (take-over, split)


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts = Counts()
        self._cas: dict[int, bool] = {}  # request id of a findAndModify -> is a compare-and-set

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        target = event.command.get(name)
        where = target if isinstance(target, str) else ""
        self.counts.commands[f"{name} {where}".strip()] += 1
        if name == "findAndModify":
            is_cas = "version" in event.command.get("query", {})
            self._cas[event.request_id] = is_cas
            self.counts.cas_attempts += is_cas

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        is_cas = self._cas.pop(event.request_id, None)
        if is_cas is None or event.reply.get("value") is not None:
            return
        if is_cas:
            self.counts.cas_conflicts += 1
        else:
            self.counts.other_fam_misses += 1

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._cas.pop(event.request_id, None)


def main(argv: list[str]) -> None:
    wait = argv[0] == "--wait"
    out, cli_args = Path(argv[1 if wait else 0]), argv[2 if wait else 1 :]
    if wait:
        Path(f"{out}.ready").touch()
        sys.stdin.readline()
    counter = CommandCounter()
    monitoring.register(counter)
    try:
        cli.main(cli_args)
    finally:
        # Not asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs.
        out.write_bytes(
            orjson.dumps({**vars(counter.counts), "commands": dict(counter.counts.commands)})
        )


if __name__ == "__main__":
    main(sys.argv[1:])
