"""Tests for tools/fetch_corpus.py against a local HTTP server (no internet needed)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib.util
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

TOOL_PATH = Path(__file__).resolve().parent.parent / "tools" / "fetch_corpus.py"

HEADER = (
    "The Project Gutenberg eBook of 测试书\n"
    "\n"
    "This ebook is for the use of anyone anywhere in the United States.\n"
    "\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK 测试书 ***\n"
    "\n"
)
FOOTER = (
    "\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK 测试书 ***\n"
    "\n"
    "Updated editions will replace the previous one--the old editions will be renamed.\n"
    "START: FULL LICENSE\n"
)
BODY_A = (
    "第一回　甄士隐梦幻识通灵\n"
    "\u3000\u3000此开卷第一回也。作者自云：曾历过一番梦幻之后。\n"
    "\n"
    "第二回　贾夫人仙逝扬州城\n"
)
BODY_B = "第一回　灵根育孕源流出\n\u3000\u3000诗曰：混沌未分天地乱，茫茫渺渺无人见。\n"


def load_tool() -> ModuleType:
    """Import tools/fetch_corpus.py by path: tools/ is not a package."""
    spec = importlib.util.spec_from_file_location("fetch_corpus", TOOL_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


fc = load_tool()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def running(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run a ThreadingHTTPServer on 127.0.0.1 in a thread; yield its base URL.

    A short poll interval keeps shutdown (and so each test) fast.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def base_url(server_root: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving server_root, shut down after the test."""
    with running(functools.partial(QuietHandler, directory=str(server_root))) as url:
        yield url


@pytest.fixture
def dead_url() -> str:
    """A URL on a port nothing listens on, so connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def serve(root: Path, book_id: int, text: str) -> bytes:
    """Put a Gutenberg-style file where the tool looks for it; return its bytes."""
    data = text.encode("utf-8")
    path = root / "cache" / "epub" / str(book_id) / f"pg{book_id}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def book(book_id: int, name: str, digest: str | None) -> object:
    return fc.Book(book_id, name, "测试", "佚名", digest)


def write_table(path: Path, books: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps(books, ensure_ascii=False), encoding="utf-8")
    return path


def entry(book_id: int, name: str, digest: str | None) -> dict[str, object]:
    return {"id": book_id, "name": name, "title": "测试", "author": "佚名", "sha256": digest}


def leftovers(out: Path) -> list[str]:
    """Temp files the tool must never leave behind."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_builtin_table_has_the_six_classics() -> None:
    assert {b.id for b in fc.BOOKS} == {24264, 23962, 23950, 23863, 24032, 23910}
    assert len({b.name for b in fc.BOOKS}) == 6
    assert fc.book_url("https://www.gutenberg.org/", 24264) == "https://www.gutenberg.org/cache/epub/24264/pg24264.txt"


def test_pinned_download_strips_header_and_footer(server_root: Path, base_url: str, tmp_path: Path) -> None:
    data = serve(server_root, 101, HEADER + BODY_A + FOOTER)
    out = tmp_path / "out"

    statuses = fc.fetch(out, [book(101, "alpha", sha256(data))], base_url, timeout=2, retries=0)

    assert statuses == {"alpha": "downloaded"}
    assert (out / "alpha.txt").read_text(encoding="utf-8") == BODY_A
    assert (out / "alpha.sha256").read_text(encoding="utf-8").split()[0] == sha256(data)
    assert leftovers(out) == []


def test_unpinned_download_prints_sha256_and_normalises_crlf(
    server_root: Path, base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = serve(server_root, 102, (HEADER + BODY_B + FOOTER).replace("\n", "\r\n"))
    out = tmp_path / "out"

    assert fc.fetch(out, [book(102, "beta", None)], base_url, timeout=2, retries=0) == {"beta": "downloaded"}

    assert sha256(data) in capsys.readouterr().out
    assert (out / "beta.txt").read_bytes() == BODY_B.encode("utf-8")


def test_wrong_sha256_fails_that_book_only(
    server_root: Path, base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = serve(server_root, 101, HEADER + BODY_A + FOOTER)
    serve(server_root, 102, HEADER + BODY_B + FOOTER)
    table = write_table(tmp_path / "table.json", [entry(102, "beta", "0" * 64), entry(101, "alpha", sha256(good))])
    out = tmp_path / "out"

    code = fc.main([str(out), "--table", str(table), "--base-url", base_url, "--timeout", "2", "--retries", "0"])

    assert code == 1
    assert not (out / "beta.txt").exists()
    assert not (out / "beta.sha256").exists()
    assert (out / "alpha.txt").read_text(encoding="utf-8") == BODY_A
    assert leftovers(out) == []
    stdout = capsys.readouterr().out
    assert "beta (测试, 佚名): FAILED: sha256 mismatch" in stdout
    assert "alpha (测试, 佚名): downloaded" in stdout


def test_second_run_skips_existing_files(
    server_root: Path, base_url: str, dead_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = serve(server_root, 101, HEADER + BODY_A + FOOTER)
    table = write_table(tmp_path / "table.json", [entry(101, "alpha", sha256(data)), entry(102, "beta", None)])
    serve(server_root, 102, HEADER + BODY_B + FOOTER)
    out = tmp_path / "out"
    args = [str(out), "--table", str(table), "--timeout", "2", "--retries", "0"]
    assert fc.main([*args, "--base-url", base_url]) == 0
    capsys.readouterr()

    assert fc.main([*args, "--base-url", dead_url]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines == ["alpha (测试, 佚名): already there", "beta (测试, 佚名): already there"]


def test_pinned_book_is_fetched_again_when_recorded_sha256_differs(
    server_root: Path, base_url: str, tmp_path: Path
) -> None:
    data = serve(server_root, 101, HEADER + BODY_A + FOOTER)
    out = tmp_path / "out"
    out.mkdir()
    (out / "alpha.txt").write_text("stale", encoding="utf-8")
    (out / "alpha.sha256").write_text("f" * 64 + "  pg101.txt\n", encoding="utf-8")

    assert fc.fetch(out, [book(101, "alpha", sha256(data))], base_url, 2, 0) == {"alpha": "downloaded"}
    assert (out / "alpha.txt").read_text(encoding="utf-8") == BODY_A


def test_unreachable_server_is_one_line_per_book(
    dead_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    code = fc.main([str(out), "--only", "hongloumeng", "xiyouji", "--base-url", dead_url,
                    "--timeout", "2", "--retries", "0"])

    assert code == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("hongloumeng (红楼梦, 曹雪芹): FAILED: network error")
    assert lines[1].startswith("xiyouji (西游记, 吴承恩): FAILED: network error")
    assert "Traceback" not in captured.out + captured.err
    assert list(out.iterdir()) == []


def test_http_404_is_a_failure(base_url: str, tmp_path: Path) -> None:
    statuses = fc.fetch(tmp_path / "out", [book(999, "missing", None)], base_url, timeout=2, retries=0)
    assert statuses == {"missing": "FAILED: HTTP 404 File not found"}


def test_missing_markers_keep_whole_text(
    server_root: Path, base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "没有标记的文本。\n\u3000\u3000第二行。\n"
    serve(server_root, 103, text)
    out = tmp_path / "out"

    assert fc.fetch(out, [book(103, "gamma", None)], base_url, timeout=2, retries=0) == {"gamma": "downloaded"}

    assert (out / "gamma.txt").read_text(encoding="utf-8") == text
    assert "markers not found" in capsys.readouterr().err


def test_retries_after_a_server_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 followed by success must end in a download when retries allow it."""
    payload = (HEADER + BODY_B + FOOTER).encode("utf-8")
    calls: list[str] = []

    class FlakyHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(self.path)
            if len(calls) == 1:
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    monkeypatch.setattr(fc, "RETRY_DELAY_S", 0)
    with running(FlakyHandler) as url:
        statuses = fc.fetch(tmp_path / "out", [book(104, "delta", None)], url, timeout=2, retries=1)
    assert statuses == {"delta": "downloaded"}
    assert calls == ["/cache/epub/104/pg104.txt"] * 2
    assert (tmp_path / "out" / "delta.txt").read_text(encoding="utf-8") == BODY_B


@pytest.mark.parametrize(
    "extra",
    [
        ["--only", "nosuchbook"],
        ["--timeout", "0"],
        ["--retries", "-1"],
        ["--base-url", "file:///etc"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, extra: list[str]) -> None:
    assert fc.main([str(tmp_path / "out"), *extra]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "table",
    [
        "not json",
        "[]",
        json.dumps([{"id": 1, "name": "../evil", "title": "t", "author": "a", "sha256": None}]),
        json.dumps([{"id": 1, "name": "ok", "title": "t", "author": "a", "sha256": "xyz"}]),
        json.dumps([{"id": 1, "name": "ok", "title": "t", "author": "a"}]),
        json.dumps([entry(1, "ok", None), entry(2, "ok", None)]),
    ],
)
def test_bad_table_exits_2(tmp_path: Path, table: str) -> None:
    path = tmp_path / "table.json"
    path.write_text(table, encoding="utf-8")
    assert fc.main([str(tmp_path / "out"), "--table", str(path)]) == 2
