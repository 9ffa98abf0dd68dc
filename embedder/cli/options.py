"""Options shared by several commands, and the decorator that turns a group of options into
the settings object of the stage that owns them."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from embedder.cli.types import JSON_OBJECT
from embedder.errors import EmbedderError
from embedder.queue.output_location import absolute
from embedder.queue.spec import (
    DEFAULT_DATABASE,
    DEFAULT_EXCLUDE,
    DEFAULT_FILTER,
    DEFAULT_TARGET_FIELD,
    DEFAULT_TEXT_FIELD,
    QueueSpec,
)

type Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DEFAULT_MONGO_URI = "mongodb://localhost:27017"
# The seed queue (twitter_data.tweets into gemma_embedded_768) keeps the seed's directories;
# every other queue gets its own (default_dirs), so two queues never share an output.
DEFAULT_OUTPUT_DIR = "embeddings/shards"
DEFAULT_CONSOLIDATED_DIR = "embeddings/consolidated"
SEED_COLLECTION = "tweets"
DIRS_HELP = "embeddings/<database>/<collection>/<target field>/{}; embeddings/{} for the seed queue"

# Ranges of numbers: a zero or negative value is refused before any work, with click's
# one-line error naming the option.
AT_LEAST_ONE = click.IntRange(min=1)
POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)
SECONDS_OR_ZERO = click.FloatRange(min=0)


def default(settings: type[Any], name: str) -> Any:
    """The default of a settings dataclass's field: each default is written there only."""
    for spec in dataclasses.fields(settings):
        if spec.name == name:
            if spec.default_factory is not dataclasses.MISSING:
                return spec.default_factory()
            return spec.default
    raise AttributeError(f"{settings.__name__} has no field {name!r}")


def options_group(
    into: str,
    build: Callable[..., Any],
    *options: Decorator,
    context: Sequence[str] = (),
) -> Decorator:
    """Options that the command receives as one argument ``into``, built by ``build`` from
    them (and from the ``context`` arguments that outer decorators built, left in place).
    The settings' own checks become click's one-line usage error."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        names: list[str] = []

        @functools.wraps(func)
        def with_settings(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            try:
                built = build(**given, **{name: kwargs[name] for name in context})
            except EmbedderError as exc:
                raise click.UsageError(str(exc)) from None
            return func(**{into: built}, **kwargs)

        before = len(getattr(with_settings, "__click_params__", ()))
        decorated = apply(*options)(with_settings)
        params: list[click.Parameter] = decorated.__click_params__  # type: ignore[attr-defined]
        names.extend(str(p.name) for p in params[before:])
        return decorated

    return decorate


def apply(*options: Decorator) -> Decorator:
    """Several option decorators as one, in the order given."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def queue_spec(
    *,
    collection: str,
    database: str,
    queue_filter: dict[str, Any] | None,
    exclude: dict[str, Any] | None,
    text_field: str = DEFAULT_TEXT_FIELD,
    target_field: str = DEFAULT_TARGET_FIELD,
) -> QueueSpec:
    return QueueSpec(
        collection=collection,
        database=database,
        filter=DEFAULT_FILTER if queue_filter is None else queue_filter,
        exclude=DEFAULT_EXCLUDE if exclude is None else exclude,
        text_field=text_field,
        target_field=target_field,
    )


MONGO_URI = click.option(
    "--mongo-uri",
    default=DEFAULT_MONGO_URI,
    show_default=True,
    envvar="EMBEDDER_MONGO_URI",
    help="MongoDB URI; TLS and auth options go in it. Prefer the environment for passwords.",
)
DATABASE = click.option(
    "--database", default=DEFAULT_DATABASE, show_default=True, envvar="EMBEDDER_DATABASE"
)
TEXT_FIELD_HELP = "Field holding the text; dotted paths such as extended_tweet.full_text work."

# Options that name a work queue; the command receives ``spec: QueueSpec`` and ``mongo_uri``.
queue_options = apply(
    options_group(
        "spec",
        queue_spec,
        click.option(
            "--collection",
            required=True,
            envvar="EMBEDDER_COLLECTION",
            help="Collection holding the texts.",
        ),
        DATABASE,
        click.option(
            "--filter",
            "queue_filter",
            type=JSON_OBJECT,
            envvar="EMBEDDER_FILTER",
            help="Queue filter as JSON; its fields lead the index. "
            f"[default: {json.dumps(DEFAULT_FILTER)}]",
        ),
        click.option(
            "--exclude",
            type=JSON_OBJECT,
            envvar="EMBEDDER_EXCLUDE",
            help=f"Extra partial-filter predicates as JSON. [default: {json.dumps(DEFAULT_EXCLUDE)}]",
        ),
        click.option(
            "--text-field",
            default=DEFAULT_TEXT_FIELD,
            show_default=True,
            envvar="EMBEDDER_TEXT_FIELD",
            help=TEXT_FIELD_HELP,
        ),
        click.option(
            "--target-field",
            default=DEFAULT_TARGET_FIELD,
            show_default=True,
            envvar="EMBEDDER_TARGET_FIELD",
            help="Field that marks a doc done (or failed).",
        ),
    ),
    MONGO_URI,
)


def _optional_spec(
    *,
    collection: str | None,
    database: str,
    queue_filter: dict[str, Any] | None,
    exclude: dict[str, Any] | None,
    target_field: str,
) -> QueueSpec | None:
    if collection is None:
        return None
    return queue_spec(
        collection=collection,
        database=database,
        queue_filter=queue_filter,
        exclude=exclude,
        target_field=target_field,
    )


# Optional options naming a queue (no MongoDB needed); the command receives
# ``spec: QueueSpec | None``, None when no --collection is given.
queue_naming_options = options_group(
    "spec",
    _optional_spec,
    click.option(
        "--collection",
        envvar="EMBEDDER_COLLECTION",
        help="The queue whose shards these are: its directories by default, and only its "
        "shards are taken. [default: the seed queue, without a check]",
    ),
    DATABASE,
    click.option("--filter", "queue_filter", type=JSON_OBJECT, envvar="EMBEDDER_FILTER"),
    click.option("--exclude", type=JSON_OBJECT, envvar="EMBEDDER_EXCLUDE"),
    click.option(
        "--target-field",
        default=DEFAULT_TARGET_FIELD,
        show_default=True,
        envvar="EMBEDDER_TARGET_FIELD",
    ),
)


def default_dirs(spec: QueueSpec | None) -> tuple[str, str]:
    """The shards and consolidated directories of a queue when none are given."""
    seed = (DEFAULT_DATABASE, SEED_COLLECTION, DEFAULT_TARGET_FIELD)
    if spec is None or (spec.database, spec.collection, spec.target_field) == seed:
        return DEFAULT_OUTPUT_DIR, DEFAULT_CONSOLIDATED_DIR
    parts = (spec.database, spec.collection, spec.target_field)
    base = "/".join(["embeddings", *(p.replace("/", "_") for p in parts)])
    return f"{base}/shards", f"{base}/consolidated"


def _dirs(
    *, spec: QueueSpec | None, shards_dir: str | None, consolidated_dir: str | None
) -> tuple[str, str]:
    default_shards, default_consolidated = default_dirs(spec)
    return absolute(shards_dir or default_shards), absolute(
        consolidated_dir or default_consolidated
    )


# The shards and consolidated directories; the command receives ``dirs: (shards, consolidated)``
# (after a queue option, whose ``spec`` names the default directories).
consolidation_dirs = options_group(
    "dirs",
    _dirs,
    click.option(
        "--shards-dir",
        envvar=["EMBEDDER_SHARDS_DIR", "EMBEDDER_OUTPUT_DIR"],
        help="The shards the embedder wrote. [default: "
        + DIRS_HELP.format("shards", "shards")
        + "]",
    ),
    click.option(
        "--consolidated-dir",
        envvar="EMBEDDER_CONSOLIDATED_DIR",
        help="Where the large files go: a path or a pyarrow.fs URI. [default: "
        + DIRS_HELP.format("consolidated", "consolidated")
        + "]",
    ),
    context=["spec"],
)


def secret(value: str | None, path: Path | None, what: str) -> str | None:
    if value and path:
        raise click.UsageError(f"give the {what} or its file, not both")
    if path:
        return path.read_text(encoding="utf-8").strip()
    return value


def endpoint_urls(text: str) -> tuple[str, ...]:
    return tuple(u for u in (x.strip() for x in text.split(",")) if u)


ENDPOINT_OPTIONS = (
    click.option(
        "--tei-urls",
        required=True,
        envvar="EMBEDDER_TEI_URLS",
        help="Comma-separated embedding endpoints: TEI (with or without /embed), vLLM, "
        "Infinity or an OpenAI-compatible base URL; the kind is probed, or named by the "
        "scheme: tei+http://... (/embed), openai+https://... (/v1/embeddings, base64).",
    ),
    click.option(
        "--tei-api-key",
        envvar="EMBEDDER_TEI_API_KEY",
        help="Sent as 'Authorization: Bearer'.",
    ),
    click.option(
        "--tei-api-key-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="EMBEDDER_TEI_API_KEY_FILE",
    ),
)


def tei_endpoints(func: Callable[..., Any]) -> Callable[..., Any]:
    """The fleet's URLs and API key; the command receives ``urls`` and ``api_key``."""

    @functools.wraps(func)
    def with_endpoints(
        tei_urls: str, tei_api_key: str | None, tei_api_key_file: Path | None, **kwargs: Any
    ) -> Any:
        api_key = secret(tei_api_key, tei_api_key_file, "TEI API key")
        return func(urls=endpoint_urls(tei_urls), api_key=api_key, **kwargs)

    return apply(*ENDPOINT_OPTIONS)(with_endpoints)
