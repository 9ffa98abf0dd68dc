"""What every embedding server is to the fleet, whichever API it speaks.

A server has a kind (TEI, vLLM, Infinity, another OpenAI-compatible API), answers one wire API
(TEI's ``/embed`` with JSON floats, or the OpenAI embeddings route with base64 vectors), and is
described by one :class:`ServerInfo` learnt from its own listing (TEI's ``/info``, vLLM's and
Infinity's model cards). Routing, limits, retries and fault kinds are the same for all of them;
what differs is written here once: which options a kind honours (:func:`refusals`) and what
identifies its model (:class:`ModelIdentity`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import numpy as np


class ServerKind(enum.StrEnum):
    TEI = "tei"
    VLLM = "vllm"
    INFINITY = "infinity"
    OPENAI = "openai"  # any other OpenAI-compatible embeddings API (a hosted one, say)


class WireApi(enum.StrEnum):
    """The route a request takes: ``tei`` is ``/embed`` (JSON floats), ``openai`` the OpenAI
    embeddings route with ``encoding_format: base64`` (raw little-endian float32)."""

    TEI = "tei"
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """The output-changing options of a run; each kind maps them onto its own fields."""

    normalize: bool = True
    truncate: bool | None = None  # None: the server's default (TEI's --auto-truncate)
    truncation_direction: str = "Right"
    dimensions: int | None = None
    prompt_name: str | None = None


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What makes two endpoints give the same vector for a text, as far as they report it.

    ``model_id`` and ``model_sha`` (the revision) are known for every kind and make the embed
    key. The others are reported by some kinds only (None: not reported) and are compared where
    both endpoints report them: ``model_dtype`` and ``model_type`` (TEI's pooling) from TEI,
    ``max_input_length`` from TEI and vLLM. The probe vector checks the rest.
    """

    model_id: str
    model_sha: str | None
    model_dtype: str | None = None
    model_type: str | None = None  # canonical JSON
    max_input_length: int | None = None

    def differences(self, other: ModelIdentity) -> list[str]:
        """``field: ours -> theirs`` for each field both report and that differs."""
        ours, theirs = asdict(self), asdict(other)
        always = {"model_id", "model_sha"}
        return [
            f"{k}: {ours[k]!r} -> {theirs[k]!r}"
            for k in ours
            if ours[k] != theirs[k] and (k in always or None not in (ours[k], theirs[k]))
        ]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """One endpoint as the fleet sees it. Limits a kind does not report are None."""

    kind: ServerKind
    model_id: str  # TEI's model_id, vLLM's root, Infinity's id, or the requested model
    model_sha: str | None = None  # the revision: TEI's; --model-revision where none is reported
    served_model_name: str | None = None  # the ``model`` of OpenAI requests
    model_dtype: str | None = None
    model_type: str | None = None
    max_input_length: int | None = None
    auto_truncate: bool = False  # what an over-long input gets by default: cut, or refused
    max_client_batch_size: int | None = None
    max_batch_tokens: int | None = None
    max_concurrent_requests: int | None = None  # admission permits; None: no admission control
    version: str = ""

    @property
    def identity(self) -> ModelIdentity:
        names = {f.name for f in fields(ModelIdentity)}
        return ModelIdentity(**{k: v for k, v in asdict(self).items() if k in names})

    def truncates(self, options: EmbedOptions) -> bool:
        """Whether an over-long input is cut (True) or refused (False) under ``options``."""
        return self.auto_truncate if options.truncate is None else options.truncate


@dataclass(frozen=True, slots=True)
class _Honours:
    normalize_off: bool
    truncate_on: bool
    truncate_off: bool
    truncate_left: bool
    prompt_name: bool
    dimensions: bool = True


# From each server's own request model (see openai_protocol for the sources):
# TEI's /embed takes all; TEI's OpenAI route only `dimensions` (it normalises, and truncates as
# --auto-truncate says); vLLM cuts with `truncate_prompt_tokens: -1` and refuses long inputs
# otherwise, but its normalisation switch was renamed between versions (`normalize`, then
# `use_activation`) and an unknown field is ignored, not refused; Infinity always cuts and
# normalises; OpenAI's own API refuses long inputs and always normalises.
_HONOURS = {
    (ServerKind.TEI, WireApi.TEI): _Honours(True, True, True, True, True),
    (ServerKind.TEI, WireApi.OPENAI): _Honours(False, False, False, False, False),
    (ServerKind.VLLM, WireApi.OPENAI): _Honours(False, True, True, False, False),
    (ServerKind.INFINITY, WireApi.OPENAI): _Honours(False, True, False, False, False),
    (ServerKind.OPENAI, WireApi.OPENAI): _Honours(False, False, True, False, False),
}


def refusals(info: ServerInfo, wire: WireApi, options: EmbedOptions) -> list[str]:
    """Why this endpoint cannot honour ``options`` (empty when it can): said before any work."""
    honours = _HONOURS[(info.kind, wire)]
    where = f"{info.kind} ({wire} API)"
    problems = []
    if not options.normalize and not honours.normalize_off:
        problems.append(f"{where} always normalises: --no-normalize cannot be honoured")
    if options.truncate is not None and options.truncate != info.auto_truncate:
        can = honours.truncate_on if options.truncate else honours.truncate_off
        if not can:
            verb = "truncate" if options.truncate else "refuse"
            problems.append(f"{where} cannot be asked to {verb} over-long inputs (--truncate)")
    if options.truncation_direction != "Right" and not honours.truncate_left:
        problems.append(f"{where} cannot truncate on the left")
    if options.prompt_name is not None and not honours.prompt_name:
        problems.append(f"{where} has no prompt names (prompt_name {options.prompt_name!r})")
    if options.dimensions is not None and not honours.dimensions:
        problems.append(f"{where} cannot shorten vectors (dimensions)")
    return problems


class EmbedWire(Protocol):
    """One wire API: how a batch of texts becomes a request body and its answer vectors."""

    @property
    def api(self) -> WireApi: ...
    @property
    def route(self) -> str: ...

    def encode(self, texts: Sequence[str], options: EmbedOptions) -> bytes: ...

    def decode(self, raw: bytes, expected_count: int) -> tuple[np.ndarray, int | None]:
        """The ``(n, dim)`` float32 vectors, checked, and the prompt tokens where the body
        says them; raises ``tei_protocol.ProtocolError`` on anything else."""
        ...
