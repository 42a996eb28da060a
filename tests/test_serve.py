"""`gpt-novel serve`: the JSON/SSE API of a real server (uvicorn in its own process) and the page in headless
Chromium.

Two servers: one on a folder consolidated from a real 2-process run (its facts and loss.png), one on an untrained
GPT-2 big enough that a CPU streams its drafts over seconds (growth, stop and a client that goes away are then
visible), with `--queue 1`, so that a third concurrent request is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ROOT

from gpt_novel import cli
from gpt_novel.data.vocab import Vocab
from gpt_novel.metrics import read_metrics
from gpt_novel.serve import DRAIN_BYTES, _check_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
PROMPT = "青石镇的集市比往常热闹了好几倍。"


# --- servers -----------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(folder: Path, *extra: str) -> Iterator[str]:
    """`gpt-novel serve FOLDER` on a free loopback port until the block ends; yields its base URL. The process
    must end on SIGTERM within seconds."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with subprocess.Popen([sys.executable, "-m", "gpt_novel", "serve", str(folder), "--port", str(port), *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail("gpt-novel serve did not end within 15 s of SIGTERM")


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gpt-novel serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url + "/api/info", timeout=2).read()
            return
        time.sleep(0.2)
    pytest.fail("gpt-novel serve did not answer within 120 s")


@pytest.fixture(scope="module")
def trained_folder(zero_runs, tmp_path_factory) -> Path:
    from gpt_novel import consolidate

    return consolidate.consolidate(zero_runs[1], tmp_path_factory.mktemp("serve") / "hf")


@pytest.fixture(scope="module")
def slow_folder(sample_data, tmp_path_factory) -> Path:
    """An untrained 4-layer, 384-dim GPT-2 (256 positions) on the sample's tokenizer: on a CPU its drafts take
    seconds, long enough to watch them grow and to stop one midway."""
    from gpt_novel.config import TrainConfig
    from gpt_novel.consolidate import generation_config
    from gpt_novel.model import build_model

    vocab = Vocab.load(sample_data / "tokenizer")
    torch.manual_seed(0)
    model = build_model(TrainConfig(n_layer=4, n_head=4, n_embd=384, n_positions=256, dropout=0.0), vocab)
    model.generation_config = generation_config(vocab, 256)
    out = tmp_path_factory.mktemp("slow") / "hf"
    model.save_pretrained(out)
    for f in (sample_data / "tokenizer").iterdir():
        shutil.copy2(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def trained_api(trained_folder) -> Iterator[str]:
    with serving(trained_folder) as url:
        yield url


@pytest.fixture(scope="module")
def api(slow_folder) -> Iterator[str]:
    with serving(slow_folder, "--queue", "1") as url:
        yield url


# --- a client ----------------------------------------------------------------------------------------------------

def post(url: str, body: dict | bytes, timeout: float = 120) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
    request = urllib.request.Request(url, data=data, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def events(body: str) -> list[dict]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def generate(url: str, **fields) -> tuple[int, list[dict] | dict]:
    status, body = post(url + "/api/generate", {"prompt": PROMPT, "max_new_tokens": 24, **fields})
    return status, (events(body) if status == 200 else json.loads(body))


def status_of(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/api/status", timeout=10).read())


# --- in this process: what is refused before the model is asked -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    """`gpt-novel serve`'s app, here, on an untrained 1-layer GPT-2 with a character vocabulary: refusing a request
    needs no server process, no prepared data and no trained weights (nor its worker, which starts with a server)."""
    from gpt_novel.config import TrainConfig
    from gpt_novel.consolidate import generation_config
    from gpt_novel.data.vocab import SPECIAL_TOKENS
    from gpt_novel.model import build_model
    from gpt_novel.serve import create_app

    vocab = Vocab([*SPECIAL_TOKENS, *dict.fromkeys(PROMPT + "话说")], kind="char")
    torch.manual_seed(0)
    model = build_model(TrainConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, dropout=0.0), vocab)
    model.generation_config = generation_config(vocab, 64)
    out = tmp_path_factory.mktemp("tiny") / "hf"
    model.save_pretrained(out)
    vocab.save(out)
    return create_app(out, "cpu")


def asgi_post(app, url: str, chunks: Iterable[bytes], length: int | None = None) -> tuple[int, dict, int]:
    """POST `chunks` to the ASGI app as a server hands a body over, one chunk per receive() (chunked unless
    `length` is given as the Content-Length): the status, the JSON answer, and how many chunks the app pulled."""
    path, _, query = url.partition("?")
    headers = [(b"content-type", b"application/json")] + ([(b"content-length", str(length).encode())]
                                                          if length is not None else [])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 7860)}
    body, pulled, sent = iter(chunks), 0, []

    async def receive() -> dict:
        nonlocal pulled
        chunk = next(body, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(answer), pulled


def _megabytes(prefix: bytes, count: int) -> Iterator[bytes]:
    """`prefix` (if any), then `count` new megabytes, one at a time, as a socket would deliver them."""
    if prefix:
        yield prefix
    for _ in range(count):
        yield b"x" * 2**20


@pytest.mark.parametrize(("url", "prefix", "says"), [
    ("/api/generate", b'{"prompt": "', "the request is larger than 1,048,576 bytes; a prompt takes at most 20,000 "
                                       "characters (paste the end of the text)"),
    ("/api/decode?name=big.txt", b"", "the file is larger than 16 MB; upload the part to continue"),
])
@pytest.mark.parametrize("chunked", [True, False])
def test_a_200_mb_body_is_refused_before_it_is_read(tiny_app, url, prefix, says, chunked):
    """Refused by its Content-Length before a byte is kept, or chunked, as soon as it passes the limit: the 200 MB
    never sit in the server's memory. The first 32 MB are read and dropped, so that a client that sends its whole
    body before it reads gets the answer."""
    length = None if chunked else len(prefix) + 200 * 2**20
    tracemalloc.start()
    try:
        status, answer, pulled = asgi_post(tiny_app, url, _megabytes(prefix, 200), length)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (status, answer) == (413, {"error": says})
    assert pulled <= 1 + DRAIN_BYTES // 2**20 + 1  # never the whole body
    assert peak < 50 * 2**20, f"refusing a 200 MB body took {peak / 2**20:.1f} MB"


def test_a_body_within_the_limits_goes_through(tiny_app):
    """The longest prompt, every character JSON's longest spelling (a 12-byte surrogate pair), and every other field
    at its longest, still reaches the model's checks; an upload in chunks is read whole."""
    fields = {"prompt": "😀" * 20_000, "new_chapter": False, "max_new_tokens": 2048, "temperature": 0.9,
              "top_k": 100_000, "top_p": 0.95, "repetition_penalty": 1.1, "seed": 2**31 - 1, "drafts": 8}
    body = json.dumps(fields, indent=1).encode()
    status, answer, _ = asgi_post(tiny_app, "/api/generate", [body], len(body))
    assert len(body) > 240_000 and status == 422, answer  # parsed whole: the model's own checks answer
    assert answer["error"].startswith("none of the prompt's characters are in the model's vocabulary"), answer
    text = ("第一章 青石如故\n" + PROMPT * 100).encode()
    status, answer, pulled = asgi_post(tiny_app, "/api/decode?name=a.txt", [text[:1000], text[1000:]])
    assert (status, answer["text"], pulled) == (200, text.decode(), 2)


@pytest.mark.parametrize("prompt", ["话说\\ud800青石", "\\ud800"])
def test_a_lone_surrogate_in_the_prompt_is_one_line(tiny_app, prompt):
    body = f'{{"prompt": "{prompt}"}}'.encode()
    status, answer, _ = asgi_post(tiny_app, "/api/generate", [body], len(body))
    assert (status, answer) == (422, {"error": "the prompt holds a lone surrogate (\\ud800), which is not text"})


# --- the API -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_info_has_the_model_cards_facts_and_its_training_curve(trained_api, trained_folder, zero_runs):
    info = json.loads(urllib.request.urlopen(trained_api + "/api/info").read())
    facts = json.loads((trained_folder / "training.json").read_text())
    assert info["facts"] == facts and facts["steps"] == 24 and facts["tokens"] > 0 and facts["preset"] == "tiny"
    assert facts["validation"]["step"] == 24 and facts["validation"]["val_bpc"] > 0
    assert facts["first_validation"]["step"] == 12  # the run evaluates every 12 steps
    evals = {x["step"]: x["val_bpc"] for x in read_metrics(zero_runs[1]) if "val_bpc" in x}
    assert (facts["first_validation"]["val_bpc"], facts["validation"]["val_bpc"]) == (evals[12], evals[24])
    card = (trained_folder / "README.md").read_text(encoding="utf-8")
    assert f"the run's first evaluation, step 12: {facts['first_validation']['val_bpc']:.3f} (lower is better)" in card
    assert info["loss_plot"] and info["defaults"]["temperature"] == 0.9 and info["limits"]["queue"] == 8
    png = urllib.request.urlopen(trained_api + "/loss.png").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (zero_runs[1] / "loss.png").read_bytes()  # the run's curve
    page = urllib.request.urlopen(trained_api + "/").read().decode()
    assert "<textarea id=\"prompt\"" in page
    port = int(trained_api.rsplit(":", 1)[1])
    listening = [c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
    assert [a.ip for a in listening] == ["127.0.0.1"]  # loopback unless --host says otherwise


@pytest.mark.slow
def test_generate_streams_drafts_that_add_up_to_the_final_text(api):
    status, got = generate(api, drafts=2, seed=7)
    assert status == 200, got
    kinds = [e["type"] for e in got]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") >= 3, kinds
    assert got[0]["seed"] == 7 and got[0]["drafts"] == 2 and got[0]["notes"] == []
    streamed = ["".join(e["texts"][i] for e in got if e["type"] == "step") for i in range(2)]
    assert streamed == got[-1]["texts"] and streamed[0] != streamed[1] and not got[-1]["stopped"]
    again = generate(api, drafts=2, seed=7)[1]
    assert again[-1]["texts"] == got[-1]["texts"]  # the same seed, the same drafts


@pytest.mark.slow
@pytest.mark.parametrize(("fields", "says"), [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": "   \n"}, "the prompt is empty"),
    ({"prompt": "😀🙃"}, "none of the prompt's characters"),
    ({"prompt": "青" * 100_000}, "the prompt has 100,000 characters"),
    ({"temperature": 9}, "temperature: Input should be less than or equal to 5 (got 9)"),
    ({"top_p": 0}, "top_p"),
    ({"drafts": 99}, "drafts"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 4096}, "max_new_tokens: Input should be less than or equal to 2048"),
    ({"seed": -1}, "seed"),
    ({"temperature": "hot"}, "temperature"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
])
def test_bad_requests_get_a_4xx_with_one_line(api, fields, says):
    status, got = generate(api, **fields)
    assert status == 422, got
    assert set(got) == {"error"} and says in got["error"] and "\n" not in got["error"], got
    assert "Traceback" not in got["error"]


@pytest.mark.slow
def test_an_empty_prompt_starts_a_new_chapter_when_asked(trained_api):
    status, got = generate(trained_api, prompt="", new_chapter=True, max_new_tokens=16, seed=1)
    assert status == 200 and got[-1]["type"] == "end" and got[-1]["texts"][0], got


@pytest.mark.slow
def test_unknown_characters_and_a_cut_prompt_are_told(api, slow_folder):
    status, got = generate(api, prompt="Hello 😀 " + PROMPT)
    assert status == 200
    notes = got[0]["notes"]
    assert any("not in the model's vocabulary and become [UNK]" in n and "😀" in n for n in notes), notes
    status, got = generate(api, prompt=PROMPT * 60, max_new_tokens=8)  # 960 characters, 256 positions
    assert status == 200
    assert any("continues from the last 192 of its" in n for n in got[0]["notes"]), got[0]  # what a slide keeps
    status, got = generate(api, prompt=PROMPT, max_new_tokens=250)  # prompt and length outgrow the context
    assert status == 200 and got[0]["notes"] == [], got[0]  # the prompt is whole: generation slides instead
    assert got[0]["prompt_tokens"] == len(Vocab.load(slow_folder).encode(PROMPT)) > 6


@pytest.mark.slow
def test_a_full_queue_answers_503_at_once(api):
    """--queue 1: one request generating, one waiting; two more are refused at once with the queue message."""
    results: dict[str, tuple[int, object]] = {}

    def client(name: str) -> None:
        results[name] = generate(api, max_new_tokens=200, drafts=4)

    first = threading.Thread(target=client, args=("first",))
    first.start()
    deadline = time.monotonic() + 30
    while not status_of(api)["generating"] and time.monotonic() < deadline:
        time.sleep(0.02)
    others = [threading.Thread(target=client, args=(name,)) for name in ("a", "b", "c")]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(timeout=120)
    codes = sorted(code for code, _ in results.values())
    assert codes == [200, 200, 503, 503], results
    for code, got in results.values():
        if code == 503:
            assert got == {"error": "the server is busy (queue full: 1 waiting); try again in a moment"}
        else:
            assert got[-1]["type"] == "end" and not got[-1]["stopped"]
    waited = [got for name, (code, got) in results.items() if name != "first" and code == 200]
    assert waited[0][0] == {"type": "queued", "ahead": 1}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "encoding"), [("gbk.txt", "gbk"), ("big5.txt", "big5"), ("utf16.txt", "utf-16")])
def test_upload_is_decoded_as_prepare_decodes(api, name, encoding):
    text = "第一章 青石如故\n初九这天，青石镇的集市比往常热闹了好几倍。天刚亮，街上已经站满了人。\n" * 5
    if encoding == "big5":
        text = text.replace("这", "這").replace("镇", "鎮").replace("热闹", "熱鬧").replace("几倍", "幾倍").replace(
            "经站满", "經站滿").replace("刚亮", "剛亮").replace("个", "個").replace("条", "條")
    status, body = post(api + f"/api/decode?name=../../etc/{name}", text.encode(encoding))
    assert status == 200, body
    assert json.loads(body)["text"].strip() == text.strip()


@pytest.mark.slow
def test_bad_uploads_are_refused_in_one_line(api):
    status, body = post(api + "/api/decode?name=a.bin", bytes(range(256)) * 64)
    assert status == 422 and json.loads(body)["error"].startswith("a.bin: binary file"), body
    status, body = post(api + "/api/decode?name=big.txt", b"x" * (16 * 2**20 + 1))
    assert status == 413 and "larger than 16 MB" in json.loads(body)["error"], body
    status, body = post(api + "/api/decode?name=empty.txt", b"")
    assert status == 422 and json.loads(body) == {"error": "empty.txt: empty file"}, body


def _assert_generation_ends_within(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while status_of(url)["generating"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not status_of(url)["generating"], f"the generation went on {seconds} s after its client left"


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_generation(api):
    request = urllib.request.Request(api + "/api/generate", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": PROMPT, "max_new_tokens": 480, "drafts": 8}).encode())
    response = urllib.request.urlopen(request, timeout=60)
    for line in response:
        if line.startswith(b"data: ") and json.loads(line[6:])["type"] == "step":
            break
    assert status_of(api)["generating"]
    response.close()  # the tab closed
    _assert_generation_ends_within(api, 2.0)  # left alone, 8 drafts × 480 tokens take far longer


def test_serve_refuses_a_busy_port_and_a_folder_that_is_not_a_model(tmp_path, slow_folder, capsys):
    """In-process, through `gpt-novel serve`'s own entry: each refusal comes before the model is loaded."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(slow_folder), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gpt-novel serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert "try --port" in err
    assert cli.main(["serve", str(slow_folder), "--port", "99999"]) == 2
    assert capsys.readouterr().err == "gpt-novel serve: error: need --queue ≥ 1 and a --port of 1…65535\n"
    assert cli.main(["serve", str(tmp_path), "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"gpt-novel serve: error: {tmp_path} is not a model folder (no config.json); "
                                       "make one with tools/consolidate.py\n")


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free_again():
    """Restarting `serve` right after stopping it, a client's connection still in TIME_WAIT on the port (the
    server closed first), is not refused: uvicorn can listen there, so the check before loading says so too."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server's side closes first: its end of the connection waits in TIME_WAIT
            client.recv(1)
    _check_port("127.0.0.1", port)


# --- the page in a browser ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("no chromium (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


def _draft_lengths_until_done(page, index: int, timeout: float = 60) -> list[int]:
    """The lengths of draft `index`'s text as seen every 20 ms, until it is done."""
    seen: list[int] = []
    box = page.locator(f".draft[data-index='{index}']")
    box.wait_for(timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = box.get_attribute("data-state")
        length = len(box.locator(".text").inner_text())
        if not seen or seen[-1] != length:
            seen.append(length)
        if state in ("done", "stopped"):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"draft {index} still not done after {timeout} s: {seen}")


# Whether text in the page's font draws as glyphs: each missing character draws the same box, so without a CJK font
# Chinese text and characters no font has (private use) look alike.
_GLYPHS_DRAWN = r"""() => {
  const canvas = document.createElement("canvas"), g = canvas.getContext("2d");
  canvas.width = 240; canvas.height = 40;
  const draw = (text) => {
    g.clearRect(0, 0, 240, 40); g.font = getComputedStyle(document.querySelector("h1")).font;
    g.fillText(text, 0, 30); return canvas.toDataURL();
  };
  return draw("青石镇的集市") !== draw("\u{10FFFD}\u{10FFFD}\u{10FFFD}\u{10FFFD}\u{10FFFD}\u{10FFFD}");
}"""


@pytest.mark.slow
def test_the_page_in_chromium(browser, trained_api, trained_folder, api, tmp_path):
    from gpt_novel.consolidate import card_title

    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    failed: list[str] = []  # until the requests below that are refused on purpose
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)
    page.goto(trained_api)  # the trained model: its facts and curve
    page.locator("#facts").get_by_text("24", exact=True).wait_for(timeout=10_000)
    # the curve's src is set when the facts arrive; its download may still be on the way
    page.wait_for_function("document.getElementById('loss').complete && document.getElementById('loss').naturalWidth",
                           timeout=10_000)
    assert page.text_content("#model-name") == card_title(trained_folder) != "hf"  # the card's name
    assert "bits/char at step 12 (lower is better)" in page.text_content("#facts")  # the figure beside the start
    assert page.evaluate(_GLYPHS_DRAWN), "Chinese draws as boxes: install a CJK font (Debian: fonts-wqy-zenhei)"

    page.goto(api)
    page.locator("#max_new_tokens").wait_for()
    page.wait_for_function("document.getElementById('temperature').value !== ''")
    page.fill("#prompt", PROMPT)
    page.fill("#max_new_tokens", "160")
    page.fill("#drafts", "2")
    page.click("#start")
    lengths = _draft_lengths_until_done(page, 0)
    growing = [n for n in lengths if n > 0]
    assert len(growing) >= 3 and growing == sorted(growing), lengths  # at least three visible updates
    assert page.locator(".draft[data-index='0']").get_attribute("data-state") == "done"
    assert page.locator(".draft").count() == 2
    whole = PROMPT + page.locator(".draft[data-index='1'] .text").inner_text()
    with page.expect_download() as download:  # the opening with the draft, as a file
        page.locator(".draft[data-index='1'] .download").click()
    assert Path(download.value.path()).read_text(encoding="utf-8") == whole
    page.locator(".draft[data-index='1'] .copy").click()
    page.wait_for_function("document.querySelector(\".draft[data-index='1'] .copy\").textContent === 'copied'")
    assert page.evaluate("navigator.clipboard.readText()") == whole

    texts = []  # 600 tokens from a 256-position model: streamed, no note, the same text twice for a seed
    for _ in range(2):
        page.fill("#prompt", PROMPT)
        page.fill("#max_new_tokens", "600")
        page.fill("#drafts", "1")
        page.fill("#seed", "11")
        page.click("#start")  # the drafts before stay, done, until the new ones start
        page.wait_for_function("document.querySelector(\".draft[data-index='0']\")?.dataset.state === 'generating'")
        growing = [n for n in _draft_lengths_until_done(page, 0, timeout=120) if n > 0]
        assert len(growing) >= 3 and growing == sorted(growing)
        assert page.text_content("#notes") == ""
        texts.append(page.locator(".draft[data-index='0'] .text").inner_text())
    assert texts[0] == texts[1] and len(texts[0]) > 256

    page.fill("#max_new_tokens", "480")  # a second one, stopped midway
    page.fill("#drafts", "3")
    page.click("#start")
    page.wait_for_function("(document.querySelector(\".draft[data-index='0'] .text\") || {}).textContent?.length > 4")
    page.click("#stop")
    page.wait_for_function("document.querySelector(\".draft[data-index='0']\").dataset.state === 'stopped'")
    stopped = page.locator(".draft[data-index='0'] .text").inner_text()
    time.sleep(0.5)
    assert page.locator(".draft[data-index='0'] .text").inner_text() == stopped  # nothing more arrives
    _assert_generation_ends_within(api, 1.5)  # the 0.5 s above included; left alone, the drafts take seconds more

    page.locator(".draft[data-index='1'] .continue").click()  # continue from a draft: prompt + draft, generating
    page.wait_for_function("document.querySelector(\".draft[data-index='0']\")?.dataset.state === 'generating'")
    page.click("#stop")

    gbk = tmp_path / "开头.txt"
    gbk.write_bytes(("第一章 青石如故\n" + PROMPT + "\n").encode("gbk"))
    page.set_input_files("#file", str(gbk))
    page.wait_for_function("document.getElementById('prompt').value.startsWith('第一章 青石如故')")

    assert failed == [], failed  # no 404 (a favicon), no error in the console
    page.fill("#temperature", "9")  # an out-of-range value: the server's message on the page
    page.click("#start")
    page.wait_for_function("document.getElementById('error').textContent.includes('temperature')")
    page.fill("#temperature", "0.9")
    prompt = page.input_value("#prompt")
    page.fill("#prompt", "")
    page.click("#start")
    page.wait_for_function("document.getElementById('error').textContent.includes('the prompt is empty')")
    page.fill("#prompt", "Hello 😀 " + prompt)  # characters the vocabulary lacks: named on the page
    page.click("#start")
    page.wait_for_function("document.getElementById('notes').textContent.includes('😀')")
    assert page.text_content("#error") == ""
    page.wait_for_function("document.querySelector(\".draft[data-index='0']\")?.dataset.state === 'done'",
                           timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)
    assert (ARTIFACTS / "serve.png").stat().st_size > 10_000
