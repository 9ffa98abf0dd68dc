"""Every ordinary mistake of a first hour is one ``Error:`` line and a documented exit code,
never a traceback (issue 14).

Most cases run ``embedder`` in this process through ``embedder.cli.main`` (the real path:
click, the commands, ``cli.failures``), which is several times faster than a process each;
an exception escaping it fails the test as a traceback would. Servers, signals and the
``python -m embedder`` entry run as real processes. Real servers on loopback wherever a case
needs one: a listening socket for a port in use, a socket that never answers, a tiny HTTP
server that answers with an HTML 404 page, the tests' MongoDB.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymongo import MongoClient

from embedder import logs
from embedder.cli import failures, main
from embedder.cli.exit_codes import ExitCode
from embedder.queue.connection import scrub
from tests.support.servers import ROOT, free_port, run_python

Client = MongoClient[dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        """The one ``Error:`` line; fails unless there is exactly one and no traceback."""
        assert "Traceback" not in self.stderr + self.stdout, self.stderr
        errors = [line for line in self.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, self.stderr
        return errors[0]


@pytest.fixture
def embedder() -> Iterator[Callable[..., Outcome]]:
    """``embedder(*args)`` runs the command in this process and returns its ``Outcome``."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigint = signal.getsignal(signal.SIGINT)

    def run(*args: str) -> Outcome:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            else:
                code = 0
        return Outcome(code, out.getvalue(), err.getvalue())

    yield run
    root.handlers[:], root.level = handlers, level
    signal.signal(signal.SIGINT, sigint)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on (and never answers): in use, and silent."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def html_server() -> Iterator[str]:
    """A web server that is not TEI: every path is an HTML 404 page."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404, "Nothing here")

        do_POST = do_GET

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- MongoDB URIs and reachability -------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "says", "hidden"),
    [
        ("mongodb://app:p@ss@127.0.0.1:1", "percent-escaped", "ss@"),
        ("mongodb://127.0.0.1:abc", "the port is not a number", None),
        (
            "http://127.0.0.1:27017",
            "must start with mongodb:// or mongodb+srv:// (not http://)",
            None,
        ),
        (
            "mongodb://127.0.0.1:1/?tls=true&tlsCAFile=/no/such/ca.pem",
            "tlsCAFile /no/such/ca.pem",
            None,
        ),
    ],
    ids=["unescaped-at", "port", "http-scheme", "tls-ca-file"],
)
def test_a_malformed_mongodb_uri_is_one_line_naming_the_option(
    embedder: Callable[..., Outcome], uri: str, says: str, hidden: str | None
) -> None:
    done = embedder("status", "--collection", "tweets", "--mongo-uri", uri)
    assert done.code == ExitCode.COULD_NOT_RUN
    assert done.error.startswith("Error: --mongo-uri") and says in done.error, done.error
    assert hidden is None or hidden not in done.stderr, done.stderr


def test_an_unreachable_mongodb_is_named_with_its_host_and_the_cause(
    embedder: Callable[..., Outcome], listening: int
) -> None:
    """The URI is shown with only its password hidden, with the cause in a few words; a
    network failure is not called a configuration mistake."""
    closed = free_port()
    cases = [
        (f"mongodb://app:s3cr3t@127.0.0.1:{closed}/?serverSelectionTimeoutMS=1000",
         f"mongodb://app:***@127.0.0.1:{closed}/", "connection refused"),
        # Something listens but never answers.
        (f"mongodb://127.0.0.1:{listening}/?connectTimeoutMS=300&serverSelectionTimeoutMS=1000",
         f"mongodb://127.0.0.1:{listening}/", "timed out"),
        ("mongodb://no-such-host.invalid:27017/?serverSelectionTimeoutMS=3000",
         "mongodb://no-such-host.invalid:27017/", "name not resolved"),
    ]  # fmt: skip
    for uri, shown, cause in cases:
        done = embedder("status", "--collection", "t", "--mongo-uri", uri)
        assert done.code == ExitCode.COULD_NOT_RUN, done.stderr
        assert f"Error: MongoDB at {shown}" in done.error, done.error
        assert f"is not reachable ({cause})" in done.error, done.error
        assert "s3cr3t" not in done.stderr and "configuration" not in done.error, done.error


# --- options and files, refused before any work ------------------------------------------


def _texts(tmp_path: Path) -> Path:
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    return texts


def test_option_mistakes_are_one_line_naming_the_option(
    embedder: Callable[..., Outcome], tmp_path: Path
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    embed = ["embed", "--collection", "t", "--tei-urls", unreachable]
    missing = tmp_path / "no-such-dir"
    under_a_file = _texts(tmp_path) / "sub"
    cases: list[tuple[list[str], int, list[str]]] = [
        ([*embed, "--batch-size", "0"], ExitCode.USAGE, ["'--batch-size'"]),
        ([*embed, "--shard-rows", "0"], ExitCode.USAGE, ["'--shard-rows'"]),
        (
            ["verify", "--collection", "t", "--doc", '{"$oid": "zzz"}'],
            ExitCode.USAGE,
            ["'--doc'", "not a valid ObjectId"],
        ),
        (
            [*embed, "--summary-json", str(missing / "s.json")],
            ExitCode.USAGE,
            ["'--summary-json'", f"{missing} does not exist"],
        ),
        (
            [
                "consolidate",
                "--shards-dir",
                str(tmp_path / "s"),
                "--consolidated-dir",
                str(tmp_path / "c"),
                "--report-json",
                str(missing / "r.json"),
            ],
            ExitCode.USAGE,
            ["'--report-json'", f"{missing} does not exist"],
        ),
        (
            [
                "autotune",
                "--tei-urls",
                unreachable,
                "--file",
                str(_texts(tmp_path)),
                "--report",
                str(missing / "report"),
            ],
            ExitCode.USAGE,
            ["'--report'", f"{missing} does not exist"],
        ),
        (
            [*embed, "--hot-dir", str(under_a_file)],
            ExitCode.COULD_NOT_RUN,
            [f"--hot-dir {under_a_file}: cannot write there"],
        ),
        (
            [
                "consolidate",
                "--shards-dir",
                str(tmp_path / "s"),
                "--consolidated-dir",
                str(tmp_path / "c"),
                "--work-dir",
                str(under_a_file),
            ],
            ExitCode.COULD_NOT_RUN,
            [f"--work-dir {under_a_file}: cannot write there"],
        ),
    ]
    for args, code, says in cases:
        done = embedder(*args)
        assert done.code == code, (args, done.stderr)
        assert all(part in done.error for part in says), (args, done.error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_hot_dir_is_refused_before_any_work(
    embedder: Callable[..., Outcome], tmp_path: Path
) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    done = embedder("embed", "--collection", "t", "--tei-urls", "http://127.0.0.1:1",
                    "--hot-dir", str(read_only))  # fmt: skip
    assert done.code == ExitCode.COULD_NOT_RUN
    assert f"--hot-dir {read_only}: cannot write there (Permission denied)" in done.error


def test_a_report_that_cannot_be_written_at_the_end_keeps_the_result(tmp_path: Path) -> None:
    """The directory vanished during the run: the result was shown, the line says so."""
    with pytest.raises(failures.CannotRun) as refused:
        failures.write_after_result(tmp_path / "gone" / "r.json", "{}", "--report-json")
    message = refused.value.format_message()
    assert message.startswith(f"--report-json {tmp_path / 'gone' / 'r.json'}: could not write")
    assert "the result is shown above" in message


def test_a_metrics_port_in_use_names_the_option(
    embedder: Callable[..., Outcome], listening: int, tmp_path: Path
) -> None:
    done = embedder(
        "embed", "--collection", "t", "--tei-urls", "http://127.0.0.1:1", "--hot-dir",
        str(tmp_path / "hot"), "--metrics-port", str(listening),
    )  # fmt: skip
    assert done.code == ExitCode.COULD_NOT_RUN
    assert done.error.startswith(f"Error: --metrics-port {listening}: cannot listen"), done.error


def test_serve_mistakes_name_the_option_or_the_extra(
    embedder: Callable[..., Outcome], tmp_path: Path
) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a model")
    bad_model = embedder("serve", "--model-file", str(garbage), "--port", "0")
    assert bad_model.code == ExitCode.COULD_NOT_RUN
    assert bad_model.error.startswith(f"Error: --model-file {garbage}: not an ONNX model")

    try:
        import torch  # noqa: F401
    except ImportError:
        no_torch = embedder("serve", "--backend", "torch", "--port", "0")
        assert no_torch.code == ExitCode.COULD_NOT_RUN
        assert "pip install 'embedder[torch]'" in no_torch.error, no_torch.error


def test_a_server_that_is_not_tei_is_named_in_a_few_words(
    embedder: Callable[..., Outcome], html_server: str, tmp_path: Path
) -> None:
    """An HTML 404 page is not dumped; a one-character API key hides no '1' of the address."""
    done = embedder("autotune", "--tei-urls", html_server, "--tei-api-key", "1",
                    "--file", str(_texts(tmp_path)), "--report", str(tmp_path / "r"))  # fmt: skip
    assert done.code == ExitCode.COULD_NOT_RUN
    assert f"{html_server}: answers neither TEI's /info nor an OpenAI model listing" in done.error
    assert "HTTP 404 with a text/html page, not a TEI answer" in done.error
    assert done.error.endswith(
        "; check --tei-urls and that an embedding server (TEI, vLLM, Infinity) runs there"
    ), done.error
    assert "<" not in done.stderr, done.stderr


def test_a_secret_is_scrubbed_as_a_whole_token() -> None:
    message = "http://127.0.0.1:18080 refused key 1 (and key k3y-1, not k3y)"
    assert scrub(message, "1") == "http://127.0.0.1:18080 refused key *** (and key k3y-1, not k3y)"
    assert scrub(message, "k3y") == message.replace("not k3y", "not ***")


def test_an_unexpected_error_is_one_line_and_its_traceback_only_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken() -> int:
        raise RuntimeError("a bug at mongodb://app:s3cr3t@db/x")

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for name, traceback in (("INFO", False), ("DEBUG", True)):
        logs.configure(name)  # as `embedder --log-level NAME` does: to stderr, redacted
        try:
            with pytest.raises(SystemExit) as ended:
                failures.run_command(broken)
        finally:
            root.handlers[:], root.level = handlers, level
            signal.signal(signal.SIGINT, signal.default_int_handler)
        err = capsys.readouterr().err
        assert ended.value.code == ExitCode.INTERNAL
        assert "Error: unexpected RuntimeError: a bug at mongodb://app:***@db/x" in err, err
        assert ("Traceback" in err) is traceback and "s3cr3t" not in err, err


# --- real processes: ports, signals, Ctrl-C ----------------------------------------------


def test_servers_on_a_port_in_use_name_the_option(listening: int) -> None:
    for command in (["serve", "--backend", "hash"], ["dev-mongo"]):
        done = run_python(["-m", "embedder", *command, "--port", str(listening)], timeout=60)
        outcome = Outcome(done.returncode, done.stdout, done.stderr)
        assert done.returncode == ExitCode.COULD_NOT_RUN, done.stderr
        assert outcome.error.startswith(f"Error: --port {listening}: 127.0.0.1:{listening} is "
                                        "already in use"), outcome.error  # fmt: skip


def _until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedder", "serve", "--backend", "hash", "--port", "0"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        _until(lambda: "listening on" in log.read_text(), "serve to listen")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == ExitCode.OK, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "embedder serve: stopped" in log.read_text() and "Traceback" not in log.read_text()


def _write_shards(shards: Path, count: int, rows: int) -> None:
    import datetime as dt

    from embedder.identity import text_hash
    from embedder.storage.schema import ShardMetadata
    from embedder.storage.shards import ShardSettings, ShardWriter

    settings = ShardSettings(cold_uri=str(shards), hot_dir=shards.parent / "hot", max_rows=10**9)
    meta = ShardMetadata(model_id="test/model", dimension=32, normalize=True)
    rng = np.random.default_rng(0)
    for n in range(count):
        writer = ShardWriter(settings, owner=uuid.uuid4().hex, dimension=32, metadata=meta)
        ids = list(range(n * rows, (n + 1) * rows))
        vectors = rng.standard_normal((rows, 32)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        writer.append(ids, vectors, at, [text_hash(str(i)) for i in ids[:1]] * rows)
        assert writer.roll() is not None


def test_ctrl_c_during_consolidate_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C while DuckDB works: its "Query interrupted" error is the interruption it is."""
    shards, out, work = tmp_path / "shards", tmp_path / "out", tmp_path / "work"
    _write_shards(shards, count=8, rows=40_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedder", "consolidate", "--shards-dir", str(shards),
         "--consolidated-dir", str(out), "--memory-limit", "64M", "--work-dir", str(work)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # DuckDB's work database appears when the shards' keys start loading into it.
        _until(lambda: any(work.glob("dedup-*")) or proc.poll() is not None, "the merge")
        assert proc.poll() is None, "consolidate finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outcome = Outcome(proc.returncode, stdout, stderr)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert outcome.error.startswith("Error: interrupted"), stderr
    assert "left in place" not in stderr, "an interruption was blamed on a shard"


def test_no_traceback_from_the_real_entry_point() -> None:
    """`python -m embedder`, as a person runs it: a mistake is one line, never a traceback."""
    done = run_python(["-m", "embedder", "status", "--collection", "t", "--mongo-uri",
                       "mongodb://127.0.0.1:abc"])  # fmt: skip
    assert done.returncode == ExitCode.COULD_NOT_RUN
    assert Outcome(done.returncode, done.stdout, done.stderr).error.startswith("Error: --mongo-uri")


# --- a queue before its indexes, an empty one, one whose filter matches nothing ----------


@pytest.fixture
def database(mongo_uri: str) -> Iterator[tuple[Client, str]]:
    client: Client = MongoClient(mongo_uri)
    name = f"embedder_test_{uuid.uuid4().hex[:10]}"
    yield client, name
    client.drop_database(name)
    client.close()


def test_commands_before_indexes_print_the_command_that_creates_them(
    embedder: Callable[..., Outcome],
    mongo_uri: str,
    database: tuple[Client, str],
    tmp_path: Path,
) -> None:
    client, db = database
    client[db]["notes"].insert_many([{"_id": i, "body": f"note {i}"} for i in range(5)])
    queue = ["--collection", "notes", "--database", db, "--mongo-uri", mongo_uri,
             "--filter", "{}", "--target-field", "vec"]  # fmt: skip
    dirs = ["--shards-dir", str(tmp_path / "s"), "--consolidated-dir", str(tmp_path / "c")]

    hints = []
    for args in (["status", *queue], ["requeue", *queue, "--failed"], ["verify", *queue, *dirs]):
        done = embedder(*args)
        assert done.code == ExitCode.COULD_NOT_RUN, (args, done.stdout, done.stderr)
        line = done.error if args[0] != "verify" else done.stdout.strip()
        assert f"index 'embedding_work_queue__vec' is missing on {db}.notes" in line, line
        hints.append(line.split("create it with: ", 1)[1])
    assert len(set(hints)) == 1, hints

    words = shlex.split(hints[0])  # run as printed
    assert words[:2] == ["embedder", "indexes"] and mongo_uri in words, words
    assert embedder(*words[1:]).code == ExitCode.OK
    shown = embedder("status", *queue)
    assert shown.code == ExitCode.OK and "pending 5" in shown.stdout, shown.stdout + shown.stderr

    missing = embedder("status", *queue[:1], "nots", *queue[2:])
    assert missing.code == ExitCode.COULD_NOT_RUN
    assert f"the collection {db}.nots does not exist (it holds notes)" in missing.error


def test_an_empty_collection_or_a_filter_that_matches_nothing_is_explained(
    embedder: Callable[..., Outcome], mongo_uri: str, database: tuple[Client, str]
) -> None:
    client, db = database
    client[db].create_collection("empty")
    client[db]["notes"].insert_many([{"_id": i, "text": f"note {i}"} for i in range(5)])
    where = ["--database", db, "--mongo-uri", mongo_uri]
    for collection in ("empty", "notes"):
        assert embedder("indexes", "--collection", collection, *where).code == ExitCode.OK

    empty = embedder("status", "--collection", "empty", *where)
    assert empty.code == ExitCode.OK
    assert f"nothing queued: the collection {db}.empty holds no docs" in empty.stdout

    unmatched = embedder("status", "--collection", "notes", *where)
    assert unmatched.code == ExitCode.OK
    assert f'no doc of {db}.notes matches the queue filter {{"lang": "en"' in unmatched.stdout
    assert "--filter '{}'" in unmatched.stdout

    # --filter '{}' (every doc) has an index of its own, not a clash with _id's.
    client[db]["every"].insert_many([{"_id": i, "text": f"note {i}"} for i in range(5)])
    every = ["--collection", "every", "--filter", "{}", *where]
    indexed = embedder("indexes", *every)
    assert indexed.code == ExitCode.OK, indexed.stderr
    shown = embedder("status", *every)
    assert "pending 5" in shown.stdout and "nothing queued" not in shown.stdout, shown.stdout
