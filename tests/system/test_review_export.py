"""Review probe of ``embedder export``: a file corpus whose --id-field ids are of mixed types
and in no sort order, with a duplicate: the matrix follows the corpus's positions."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from tests.support import corpus as corpora
from tests.support.servers import FaultTei
from tests.system.test_export import DIM, embed_file_corpus, export


def test_shuffled_mixed_type_ids_export_in_position_order(tei: FaultTei, tmp_path: Path) -> None:
    ids: list[object] = [(i * 7919) % 23 if i % 2 else f"s{(i * 31) % 23}" for i in range(23)]
    ids[15] = ids[3]  # a duplicate: the first record keeps the id
    texts = [f"text of {i} about {corpora.SCRIPTS[i % len(corpora.SCRIPTS)]}" for i in range(23)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"k": k, "t": t}) + "\n" for k, t in zip(ids, texts, strict=True))
    )
    consolidated = embed_file_corpus(
        corpus, tmp_path / "out", tei, "--id-field", "k", "--text-field", "t"
    )
    npy, pkl = tmp_path / "m.npy", tmp_path / "m.pkl"
    done = export(consolidated, "--npy", str(npy), "--pickle", str(pkl))
    assert done.returncode == 1, done.stdout + done.stderr  # position 15 is a bad record
    matrix = np.load(npy)
    good = [i for i in range(23) if i != 15]
    np.testing.assert_allclose(
        matrix[good], corpora.expected_vectors([texts[i] for i in good], DIM), atol=1e-5
    )
    assert np.isnan(matrix[15]).all()
    with pkl.open("rb") as f:
        exported_ids = pickle.load(f)["ids"]
    assert exported_ids == [None if i == 15 else ids[i] for i in range(23)]
