"""A sentence-transformers model from a local directory on torch: the GPU when there is one.

Loaded with ``local_files_only`` (nothing is fetched at run time). Batches run in
length-sorted chunks, so padding stays small and answers come back in input order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from embedder.serve.backends import Tokens, in_sorted_chunks


class SentenceTransformersBackend:
    def __init__(
        self,
        model_dir: Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        chunk: int | None = None,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        if dtype in ("float16", "bfloat16"):
            model = model.to(getattr(torch, dtype))
        model.eval()
        self._model = model
        self._tokenizer: Any = model.tokenizer
        self._device = device
        self.chunk = chunk or (256 if device.startswith("cuda") else 32)
        self.model_id = _model_id(model_dir)
        self.model_sha = _weights_sha(model_dir)
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.dimension = int(model.get_sentence_embedding_dimension() or 0)
        self.max_input_length = int(model.max_seq_length)
        self.pooling = _pooling(model)

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        encoded = self._tokenizer(
            texts,
            add_special_tokens=True,
            truncation=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            verbose=False,
        )
        result = []
        for ids, offsets, special in zip(
            encoded["input_ids"],
            encoded["offset_mapping"],
            encoded["special_tokens_mask"],
            strict=True,
        ):
            pieces = self._tokenizer.convert_ids_to_tokens(ids)
            result.append(
                Tokens(
                    list(ids),
                    list(pieces),
                    [(int(a), int(b)) for a, b in offsets],
                    [bool(s) for s in special],
                )
            )
        return result

    def embed(self, batch: list[list[int]]) -> np.ndarray:
        return in_sorted_chunks(batch, self.chunk, self.dimension, self._run)

    def _run(self, batch: list[list[int]]) -> np.ndarray:
        features = self._tokenizer.pad({"input_ids": batch}, return_tensors="pt")
        features = {name: tensor.to(self._device) for name, tensor in features.items()}
        with self._torch.inference_mode():
            vectors = self._model(features)["sentence_embedding"]
        result: np.ndarray = vectors.float().cpu().numpy()
        return result


def _model_id(model_dir: Path) -> str:
    return model_dir.resolve().name


def _weights_sha(model_dir: Path) -> str:
    """A digest of the weight files, so two servers can tell they run the same model."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.suffix in (".safetensors", ".bin", ".pt", ".onnx") and path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()[:40]


def _pooling(model: Any) -> str:
    for module in model:
        mode = (
            getattr(module, "pooling_mode", None)
            or getattr(module, "get_pooling_mode_str", lambda: None)()
        )
        if mode:
            return str(mode).replace("_tokens", "").replace("cls_token", "cls")
    return "mean"
