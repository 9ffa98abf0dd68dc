"""Commands for development and tests: ``serve`` (a TEI-compatible server on this machine),
``dev-mongo`` (an embedded MongoDB-compatible server) and ``dev-samples`` (a sample corpus)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from embedder.cli import failures
from embedder.cli.options import DATABASE, DEFAULT_MONGO_URI, SEED_COLLECTION, default
from embedder.cli.running import run, with_mongo
from embedder.serve.app import ServerSettings


@click.command()
@click.option(
    "--backend",
    type=click.Choice(["onnx", "hash", "torch"]),
    default="onnx",
    show_default=True,
    envvar="EMBEDDER_SERVE_BACKEND",
    help="onnx: all-MiniLM-L6-v2 int8 on the CPU. hash: deterministic, meaningless, for tests.",
)
@click.option(
    "--dimension",
    default=384,
    show_default=True,
    type=click.IntRange(min=1),
    help="Vector size of the hash backend.",
)
@click.option(
    "--simulate-batch-seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="hash backend: model time per batch, to simulate a GPU (with the next option).",
)
@click.option(
    "--simulate-token-seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="hash backend: model time per token of a batch.",
)
@click.option(
    "--model-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An ONNX file in place of the packaged model.",
)
@click.option(
    "--tokenizer-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A tokenizer.json in place of the packaged one.",
)
@click.option("--threads", default=0, show_default=True, help="Model threads (0: one per core).")
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="EMBEDDER_SERVE_MODEL_DIR",
    help="torch backend: a local sentence-transformers model directory.",
)
@click.option("--device", help="torch backend: cuda, cuda:1, cpu... [default: cuda when present]")
@click.option(
    "--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="torch backend weights."
)
@click.option(
    "--hostname", default="127.0.0.1", show_default=True, envvar="EMBEDDER_SERVE_HOSTNAME"
)
@click.option(
    "--port",
    default=3000,
    show_default=True,
    envvar="EMBEDDER_SERVE_PORT",
    help="0 picks a free port.",
)
@click.option(
    "--max-concurrent-requests",
    default=default(ServerSettings, "max_concurrent_requests"),
    show_default=True,
)
@click.option(
    "--max-batch-tokens", default=default(ServerSettings, "max_batch_tokens"), show_default=True
)
@click.option("--max-batch-requests", type=int, default=None)
@click.option(
    "--max-client-batch-size",
    default=default(ServerSettings, "max_client_batch_size"),
    show_default=True,
)
@click.option(
    "--auto-truncate/--no-auto-truncate",
    default=default(ServerSettings, "auto_truncate"),
    show_default=True,
)
@click.option(
    "--payload-limit", default=default(ServerSettings, "payload_limit"), show_default=True
)
@click.option(
    "--api-key", envvar="EMBEDDER_SERVE_API_KEY", help="Require 'Authorization: Bearer <key>'."
)
def serve(
    *,
    backend: str,
    dimension: int,
    simulate_batch_seconds: float,
    simulate_token_seconds: float,
    model_file: Path | None,
    tokenizer_file: Path | None,
    threads: int,
    model_dir: Path | None,
    device: str | None,
    dtype: str | None,
    hostname: str,
    port: int,
    max_concurrent_requests: int,
    max_batch_tokens: int,
    max_batch_requests: int | None,
    max_client_batch_size: int,
    auto_truncate: bool,
    payload_limit: int,
    api_key: str | None,
) -> None:
    """Serve TEI's API with a model on this machine (flags and defaults as TEI's)."""
    from embedder.serve.main import TeiServer, make_backend
    from embedder.serve.main import serve as run_server

    try:
        model = make_backend(
            backend,
            dimension=dimension,
            seconds_per_batch=simulate_batch_seconds,
            seconds_per_token=simulate_token_seconds,
            model_file=model_file,
            tokenizer_file=tokenizer_file,
            threads=threads,
            model_dir=model_dir,
            device=device,
            dtype=dtype,
        )
    except (ValueError, RuntimeError) as exc:
        raise failures.CannotRun(str(exc)) from None
    settings = ServerSettings(
        max_concurrent_requests=max_concurrent_requests,
        max_batch_tokens=max_batch_tokens,
        max_batch_requests=max_batch_requests,
        max_client_batch_size=max_client_batch_size,
        auto_truncate=auto_truncate,
        payload_limit=payload_limit,
        api_key=api_key,
    )
    try:
        run_server(TeiServer(model, settings), hostname, port)
    except OSError as exc:
        refused = failures.address_refused("--port", hostname, port, exc)
        if refused is None:
            raise
        raise refused from None


@click.command("dev-mongo")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=27017, show_default=True, help="0 picks a free port.")
@click.option(
    "--sqlite",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep data in this SQLite file (default: in memory).",
)
@click.option(
    "--user", help="Require this user (SCRAM-SHA-256); password in EMBEDDER_DEV_MONGO_PASSWORD."
)
def dev_mongo(*, host: str, port: int, sqlite: Path | None, user: str | None) -> None:
    """Run an embedded MongoDB-compatible server (mongoeco) for demos and tests."""
    from embedder.devtools import devmongo

    password = os.environ.get("EMBEDDER_DEV_MONGO_PASSWORD")
    if user and not password:
        raise click.UsageError("--user needs its password in EMBEDDER_DEV_MONGO_PASSWORD")
    try:
        asyncio.run(devmongo.run(host, port, sqlite, user, password))
    except OSError as exc:
        refused = failures.address_refused("--port", host, port, exc)
        if refused is None:
            raise
        raise refused from None


@click.command("dev-samples")
@click.option(
    "--mongo-uri", default=DEFAULT_MONGO_URI, show_default=True, envvar="EMBEDDER_MONGO_URI"
)
@DATABASE
@click.option("--collection", default=SEED_COLLECTION, show_default=True)
@click.option("--count", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--first-id", default=1, show_default=True, help="Ids count up from here (to add more)."
)
@click.option("--seed", default=7, show_default=True, help="Another seed, other texts.")
def dev_samples(
    *, mongo_uri: str, database: str, collection: str, count: int, first_id: int, seed: int
) -> None:
    """Load generated tweet-like docs (lang "en", classified), ready for the default queue."""
    from embedder.devtools.sample_docs import load_samples, sample_docs

    docs = sample_docs(count, seed=seed, first_id=first_id)
    run(
        with_mongo(mongo_uri, lambda client: load_samples(client, database, collection, docs)),
        mongo_uri,
    )
    click.echo(f"loaded {count} sample docs into {database}.{collection}")


COMMANDS = (serve, dev_mongo, dev_samples)
