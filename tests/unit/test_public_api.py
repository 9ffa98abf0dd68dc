"""The public API in ``embedder/__init__.py``: every listed name resolves to its owner's object,
the three lists of it agree, and importing a part of the package loads only what that part uses."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys

import embedder


def test_every_public_name_is_its_owners_object() -> None:
    for name, owner in embedder._OWNERS.items():
        assert getattr(embedder, name) is getattr(importlib.import_module(owner), name), name


def test_all_lists_exactly_the_owned_names() -> None:
    assert sorted(embedder.__all__) == sorted([*embedder._OWNERS, "__version__"])
    assert set(embedder.__all__) <= set(dir(embedder))


def test_type_checking_imports_match_the_owners() -> None:
    tree = ast.parse(inspect.getsource(embedder))
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n))
    imported = {
        alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == embedder._OWNERS


def test_an_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(embedder, "Nonexistent")


def test_the_server_loads_no_storage_or_queue_library() -> None:
    probe = (
        "import sys, embedder.serve.main; "
        "print(sorted({'pyarrow', 'duckdb', 'pymongo'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
