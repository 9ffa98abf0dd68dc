"""Where a queue's output is recorded and found: absolute paths, no credentials, given wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.queue.output_location import OutputLocation, absolute, location, resolve

DEFAULTS = ("embeddings/shards", "embeddings/consolidated")


def test_a_local_path_is_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert location("out/shards") == str(tmp_path / "out" / "shards")
    assert absolute("out") == str(tmp_path / "out")
    assert absolute("s3://key:secret@bucket/x") == "s3://key:secret@bucket/x"  # still usable


def test_a_uri_is_recorded_without_its_credentials() -> None:
    assert location("s3://KEY:SECRET@bucket/emb/shards?secret_key=S&region=x") == (
        "s3://bucket/emb/shards"
    )
    assert location("gs://token@bucket/out") == "gs://bucket/out"


def test_given_directories_win_then_recorded_ones_then_the_layout() -> None:
    recorded = OutputLocation(shards="/data/q/shards", consolidated="/data/merged")
    assert resolve(recorded, shards=None, consolidated=None, defaults=DEFAULTS) == (
        "/data/q/shards",
        "/data/merged",
    )
    assert resolve(recorded, shards="/x/shards", consolidated="/y", defaults=DEFAULTS) == (
        "/x/shards",
        "/y",
    )
    # Only the shards recorded (no consolidator told MongoDB): `consolidated` beside them.
    only_shards = OutputLocation(shards="s3://bucket/q/shards")
    assert resolve(only_shards, shards=None, consolidated=None, defaults=DEFAULTS) == (
        "s3://bucket/q/shards",
        "s3://bucket/q/consolidated",
    )


def test_nothing_recorded_falls_back_to_the_defaults_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve(OutputLocation(), shards=None, consolidated=None, defaults=DEFAULTS) == (
        str(tmp_path / "embeddings" / "shards"),
        str(tmp_path / "embeddings" / "consolidated"),
    )
    odd = OutputLocation(shards="/data/vectors")  # not named `shards`: the default layout
    assert resolve(odd, shards=None, consolidated=None, defaults=DEFAULTS)[1] == str(
        tmp_path / "embeddings" / "consolidated"
    )
    assert OutputLocation.from_control({"output": {"shards": 3}}) == OutputLocation()
