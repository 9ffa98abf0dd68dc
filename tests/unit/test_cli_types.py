"""The command line's parameter types: what each reads, and what it refuses (no servers)."""

from __future__ import annotations

from typing import Any

import click
import pytest
from bson import ObjectId
from click.testing import CliRunner

from embedder.cli.types import (
    BYTE_SIZE,
    CONCURRENCY,
    DOC_ID,
    JSON_OBJECT,
    POSITIVE_INT_LIST,
    size_text,
)


def _convert(kind: click.ParamType[Any], text: str) -> Any:
    return kind.convert(text, None, None)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4G", 4 << 30),
        ("512M", 512 << 20),
        ("512MiB", 512 << 20),
        ("200mb", 200 << 20),
        ("1.5K", 1536),
        ("1000", 1000),
        ("0", 0),
    ],
)
def test_a_size_is_read_in_powers_of_1024(text: str, size: int) -> None:
    assert _convert(BYTE_SIZE, text) == size


@pytest.mark.parametrize("text", ["lots", "-1G", "G"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(click.BadParameter):
        _convert(BYTE_SIZE, text)


@pytest.mark.parametrize("size", [0, 1000, 4 << 30, 512 << 20, 1536])
def test_a_size_is_written_as_it_is_read_back(size: int) -> None:
    assert _convert(BYTE_SIZE, size_text(size)) == size
    assert size_text(4 << 30) == "4G" and size_text(512 << 20) == "512M"


def test_concurrency_is_auto_or_a_positive_number() -> None:
    assert _convert(CONCURRENCY, "auto") is None
    assert _convert(CONCURRENCY, " AUTO ") is None
    assert _convert(CONCURRENCY, "8") == 8
    for wrong in ("0", "-2", "many"):
        with pytest.raises(click.BadParameter):
            _convert(CONCURRENCY, wrong)


def test_a_list_of_numbers_is_positive_and_not_empty() -> None:
    assert _convert(POSITIVE_INT_LIST, "8,16,32") == (8, 16, 32)
    assert _convert(POSITIVE_INT_LIST, "8,,16") == (8, 16)
    for wrong, why in (("", "positive"), ("0,8", "positive"), ("8,x", "list of numbers")):
        with pytest.raises(click.BadParameter, match=why):
            _convert(POSITIVE_INT_LIST, wrong)


def test_a_json_option_takes_an_object_only() -> None:
    assert _convert(JSON_OBJECT, '{"lang": "en", "n": {"$gt": 1}}') == {
        "lang": "en",
        "n": {"$gt": 1},
    }
    with pytest.raises(click.BadParameter, match="must be a JSON object"):
        _convert(JSON_OBJECT, "[1, 2]")
    with pytest.raises(click.BadParameter, match="not JSON"):
        _convert(JSON_OBJECT, "{lang: en}")


def test_a_doc_id_is_every_id_its_text_may_mean() -> None:
    oid = "507f1f77bcf86cd799439011"
    assert _convert(DOC_ID, "42") == [42, "42"]
    assert _convert(DOC_ID, "abc") == ["abc"]
    assert _convert(DOC_ID, oid) == [oid, ObjectId(oid)]
    assert _convert(DOC_ID, f'{{"$oid": "{oid}"}}')[0] == ObjectId(oid)


def test_a_refused_value_is_a_usage_error_naming_its_option() -> None:
    @click.command()
    @click.option("--size", type=BYTE_SIZE, default="1G")
    @click.option("--concurrency", type=CONCURRENCY, default="auto")
    def command(size: int, concurrency: int | None) -> None:
        click.echo(f"{size} {concurrency}")

    assert CliRunner().invoke(command, []).output == f"{1 << 30} None\n"
    refused = CliRunner().invoke(command, ["--concurrency", "0"])
    assert refused.exit_code == 2
    assert "Invalid value for '--concurrency': must be at least 1" in refused.output
