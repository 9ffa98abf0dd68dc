"""Review probe of --part: an id shared by records of two parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.support import corpus as corpora
from tests.support.servers import FaultTei
from tests.system.test_export import DIM, run_cli


def test_an_id_in_two_parts_keeps_the_first_records_vector(tei: FaultTei, tmp_path: Path) -> None:
    """Position 20 (part 2/2) repeats the id of position 2 (part 1/2): the first record keeps
    the id (README), so the consolidated row of that id is position 2's text's vector, once,
    and position 20 is reported as a duplicate."""
    texts = [f"text {i} about {corpora.SCRIPTS[i % len(corpora.SCRIPTS)]}" for i in range(32)]
    ids = [f"k{i}" for i in range(32)]
    ids[20] = "k2"
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"k": k, "text": t}) + "\n" for k, t in zip(ids, texts, strict=True))
    )
    for part in (1, 2):
        done = run_cli(
            *("embed-files", "--input", str(corpus), "--output-dir", str(tmp_path / f"p{part}")),
            *("--hot-dir", str(tmp_path / "hot"), "--tei-urls", tei.url, "--chunk-rows", "8"),
            *("--id-field", "k", "--part", f"{part}/2"),
        )
        assert done.returncode == 0, done.stdout + done.stderr
    target = tmp_path / "all"
    done = run_cli(
        *(
            "consolidate",
            "--output-dir",
            str(tmp_path / "p1"),
            "--output-dir",
            str(tmp_path / "p2"),
        ),
        *("--consolidated-dir", str(target)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = pa.concat_tables([pq.read_table(f) for f in sorted(target.glob("part-*.parquet"))])
    rows = dict(zip(table["_id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    assert len(table) == 31 and len(rows) == 31
    expected = corpora.expected_vectors([texts[2]], DIM)[0]
    np.testing.assert_allclose(np.asarray(rows["k2"], np.float32), expected, atol=1e-5)
    failures = [json.loads(x) for x in (target / "failures.jsonl").read_text().splitlines()]
    assert [f["position"] for f in failures] == [20]
