"""Finding a queue's output for ``status`` and ``verify``, and recording it for
``consolidate``: the control document says where the workers and the consolidator wrote;
``--shards-dir`` / ``--consolidated-dir`` (or their environment variables) still win."""

from __future__ import annotations

import logging
from typing import Any

import click
from click.core import ParameterSource
from pymongo import AsyncMongoClient

from embedder.cli.options import default_dirs
from embedder.cli.running import event_loop_runner, with_mongo
from embedder.errors import EmbedderError
from embedder.queue import connection as mongo
from embedder.queue.output_location import record_output, recorded_output, resolve
from embedder.queue.spec import QueueSpec

log = logging.getLogger("embedder")
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def given_dirs(dirs: tuple[str, str]) -> tuple[str | None, str | None]:
    """The directories of ``consolidation_dirs`` that the user gave; None for a default."""
    ctx = click.get_current_context()
    shards, consolidated = dirs
    return (
        shards if ctx.get_parameter_source("shards_dir") in _GIVEN else None,
        consolidated if ctx.get_parameter_source("consolidated_dir") in _GIVEN else None,
    )


async def output_dirs(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec, given: tuple[str | None, str | None]
) -> tuple[str, str]:
    """The shards and consolidated locations of ``spec``'s output, absolute."""
    recorded = await recorded_output(client, spec)
    return resolve(recorded, shards=given[0], consolidated=given[1], defaults=default_dirs(spec))


def record_consolidation(mongo_uri: str, spec: QueueSpec, dirs: tuple[str, str]) -> None:
    """Record where this consolidator reads and writes. Consolidating needs no MongoDB, so a
    failure here is a warning, never a reason not to consolidate."""
    shards, consolidated = dirs
    try:
        event_loop_runner()(
            with_mongo(
                mongo_uri,
                lambda client: record_output(
                    client, spec, shards=shards, consolidated=consolidated
                ),
            )
        )
    except EmbedderError as exc:
        log.warning(
            "could not record the output's location in %s's control document (status and "
            "verify then need --consolidated-dir): %s",
            spec.key,
            mongo.scrub(str(exc), mongo_uri),
        )
