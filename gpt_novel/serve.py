"""`gpt-novel serve HF_DIR`: a web page that continues a novel, its drafts streamed side by side as they are made.

    gpt-novel serve demo/hf [--host 127.0.0.1] [--port 7860] [--queue 8] [--device cpu] [--dtype fp32]

Why FastAPI (Starlette and pydantic) rather than Gradio: the page streams several drafts of one request side by
side, stops them when asked, and shares a JSON API with scripts and the load test (benchmarks/serve.py). FastAPI
gives that API a typed request whose bounds answer out-of-range values with a 422 naming the field, and Starlette's
streaming response ends a generator whose client went away. Gradio would bring its own front end, sized for a form
and one output box, and about 100 MB. Tokens come from `model.generate` through `generate.DraftStreamer`, the
transformers streamer interface made for several drafts (its TextIteratorStreamer streams one).

The model is loaded once. A single worker thread generates one request's drafts at a time, as one batch; a CPU or
one GPU is busy with that batch anyway. At most `--queue` requests wait; one more is answered 503 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import queue
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt_novel.consolidate import FACTS_FILE, card_title
from gpt_novel.data import ingest
from gpt_novel.data.vocab import Vocab
from gpt_novel.errors import UserError
from gpt_novel.evaluate import EVAL_FILE
from gpt_novel.generate import (
    DTYPES,
    DraftStreamer,
    SamplingOptions,
    continue_ids,
    decode_until_end,
    encode_prompt,
    fit_prompt,
    load,
    lone_surrogate,
    unknown_line,
)
from gpt_novel.metrics import LOSS_PLOT
from gpt_novel.model_folder import CONFIG_BYTES, read_json

MAX_PROMPT_CHARS = 20_000  # a longer text is refused (an upload keeps its last MAX_PROMPT_CHARS characters)
MAX_UPLOAD_BYTES = 16 * 2**20
# A /api/generate body's bytes: room for a prompt far over MAX_PROMPT_CHARS (JSON may spell a character as a
# 12-byte surrogate pair), so that a long paste gets the count of its characters, and small enough to parse at once.
MAX_REQUEST_BYTES = 2**20
# Read and dropped after a refusal, so that a client that sends its whole body before it reads the answer (urllib,
# curl, a browser) gets the 413 rather than a broken pipe; a longer body is cut off.
DRAIN_BYTES = 32 * 2**20
MAX_DRAFTS = 8
MAX_NEW_TOKENS = 2048
DEFAULT_QUEUE = 8


class GenerateRequest(BaseModel):
    """The /api/generate body; its defaults are the project's sampling defaults (generate.SamplingOptions)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = ""
    new_chapter: bool = Field(False, description="start the prompt as a new chapter; an empty prompt needs it")
    max_new_tokens: int = Field(SamplingOptions.max_new_tokens, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(SamplingOptions.temperature, ge=0, le=5, description="0: greedy")
    top_k: int = Field(SamplingOptions.top_k, ge=0, le=100_000, description="0: no top-k cut")
    top_p: float = Field(SamplingOptions.top_p, gt=0, le=1)
    repetition_penalty: float = Field(SamplingOptions.repetition_penalty, ge=0.5, le=5)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="none: a new one, reported back")
    drafts: int = Field(1, ge=1, le=MAX_DRAFTS)


@dataclasses.dataclass
class Job:
    """One request: its options, its prompt, where its events go (thread-safe), and the flag that stops it."""

    options: SamplingOptions
    prompt: str
    notes: list[str]
    send: Callable[[dict], None]
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


class Generator:
    """The model's one worker thread and its bounded queue: `with Generator(model, vocab, waiting) as gen:`."""

    def __init__(self, model, vocab: Vocab, waiting: int):
        self.model, self.vocab = model, vocab
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=waiting)
        self.thread = threading.Thread(target=self._work, name="gpt-novel-generate", daemon=True)
        self.current: Job | None = None  # the job being generated, stopped when the server stops

    def __enter__(self) -> Generator:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if (job := self.current) is not None:
            job.stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                job = self.jobs.get_nowait()
                if job is not None:
                    job.stop.set()
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> int:
        """Queue the job; how many requests are ahead of it. Raises queue.Full when `waiting` jobs already wait."""
        self.jobs.put_nowait(job)
        return max(0, self.jobs.qsize() - 1 + (self.current is not None))

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.stop.is_set():  # its client left while it waited
                continue
            self.current = job
            try:
                self._generate(job)
            except Exception as exc:  # a bug: the client gets one line, the server's log the traceback
                traceback.print_exc()
                job.send({"type": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0]})
            finally:
                self.current = None

    def status(self) -> dict:
        return {"generating": self.current is not None, "waiting": self.jobs.qsize()}

    def _generate(self, job: Job) -> None:
        options, vocab, n_positions = job.options, self.vocab, self.model.config.n_positions
        whole = encode_prompt(vocab, job.prompt, options)
        ids = fit_prompt(whole, n_positions)
        notes = job.notes + ([_cut_note(vocab, whole, ids)] if len(ids) < len(whole) else [])
        job.send({"type": "start", "drafts": options.num_samples, "seed": options.seed, "notes": notes,
                  "prompt_tokens": len(ids)})
        start, steps = time.perf_counter(), [0]

        def on_step(deltas: list[str]) -> None:
            steps[0] += 1
            if any(deltas):
                job.send({"type": "step", "texts": deltas})

        texts = continue_ids((self.model, vocab), ids, options, streamer=DraftStreamer(vocab, options.num_samples,
                                                                                         on_step), stop=job.stop)
        job.send({"type": "end", "texts": texts, "stopped": job.stop.is_set(), "tokens": steps[0] * len(texts),
                  "seconds": round(time.perf_counter() - start, 3)})


def _cut_note(vocab: Vocab, whole: list[int], kept: list[int]) -> str:
    tail = decode_until_end(vocab, kept)
    return (f"the prompt is longer than the model's context: it continues from the last {len(kept):,} of its "
            f"{len(whole):,} tokens (from “{tail[:12]}…”)")


def check_request(req, vocab: Vocab, n_positions: int) -> list[str]:
    """Refuse what cannot be generated (UserError: the API's 422 and the page's message); the notes to show."""
    if lone := lone_surrogate(req.prompt):  # JSON allows "\ud800"; the answer could not encode it (a 500)
        raise UserError(f"the prompt holds a lone surrogate ({lone}), which is not text")
    if len(req.prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"the prompt has {len(req.prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are taken "
                        f"(the model's context is {n_positions} tokens: paste the end of the text)")
    if not req.prompt.strip() and not req.new_chapter:
        raise UserError("the prompt is empty: paste the opening to continue, or tick “new chapter” to start one")
    unknown = vocab.unknown_chars(req.prompt)
    if unknown and len(unknown) == len({ch for ch in vocab.prepare_text(req.prompt) if not ch.isspace()}):
        raise UserError(f"none of the prompt's characters are in the model's vocabulary ("
                        f"{' '.join(unknown[:40])}): it would continue from [UNK]s")
    return [unknown_line(unknown)] if unknown else []


def options_of(req) -> SamplingOptions:
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    return SamplingOptions(req.max_new_tokens, req.temperature, req.top_k, req.top_p, req.repetition_penalty,
                           req.drafts, seed, req.new_chapter)


def model_info(model_dir: Path, model, vocab: Vocab, waiting: int) -> dict:
    """What the page shows of the model (the facts consolidation recorded, `gpt-novel eval`'s scores) and the
    limits and defaults of its controls."""
    def read(name: str) -> dict | None:  # the page does without a missing or damaged one
        with contextlib.suppress(UserError):
            return read_json(model_dir / name, str(model_dir), CONFIG_BYTES)
        return None

    scores = read(EVAL_FILE)
    return {
        "name": card_title(model_dir) or model_dir.resolve().name, "folder": str(model_dir.resolve()),
        "facts": read(FACTS_FILE), "n_positions": model.config.n_positions,
        "vocab_size": len(vocab), "tokenizer": vocab.kind, "loss_plot": (model_dir / LOSS_PLOT).is_file(),
        "eval": {k: scores[k] for k in ("val_loss", "val_ppl", "val_bpc") if k in scores} if scores else None,
        "defaults": GenerateRequest().model_dump(),
        "limits": {"max_prompt_chars": MAX_PROMPT_CHARS, "max_drafts": MAX_DRAFTS, "queue": waiting,
                   "max_new_tokens": MAX_NEW_TOKENS},
    }


def create_app(model_dir: str | Path, device: str | None = None, dtype: str | None = None,
               waiting: int = DEFAULT_QUEUE):
    """The FastAPI application, the model loaded (once, here) and the worker started with the app."""
    model_dir = Path(model_dir)
    model, vocab = load(model_dir, device, dtype)
    vocab.encode("话说")  # the tokenizer (thulac's model for words) loads now, not in the first user's request
    info = model_info(model_dir, model, vocab, waiting)
    page = resources.files("gpt_novel").joinpath("static/serve.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with Generator(model, vocab, waiting) as gen:
            app.state.generator = gen
            yield

    # the schema at /openapi.json; no /docs page: FastAPI's loads its scripts from a CDN, which a machine offline lacks
    app = FastAPI(title="gpt-novel", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refuse(422, "; ".join(_validation_line(e) for e in exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return refuse(exc.status_code, str(exc.detail))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return refuse(422, str(exc))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/info")
    async def api_info() -> dict:
        return info

    @app.get("/api/status")
    async def api_status(request: Request) -> dict:
        return request.app.state.generator.status()

    @app.get("/" + LOSS_PLOT)
    async def loss_plot() -> FileResponse:
        if not info["loss_plot"]:
            raise HTTPException(404, f"{model_dir.name} has no {LOSS_PLOT} (the run had none)")
        return FileResponse(model_dir / LOSS_PLOT, media_type="image/png")

    @app.post("/api/decode")
    async def decode(request: Request, name: str = "upload.txt") -> dict:
        """An uploaded file's bytes (the body) → its text, decoded as prepare decodes novels; `name` only names it
        in messages: nothing is read from any path."""
        data = await request.body()  # at most MAX_UPLOAD_BYTES: BodyLimit refuses more as it arrives
        text, notes = await run_in_threadpool(ingest.decode_text, data, Path(name).name or "upload.txt")
        if len(text) > MAX_PROMPT_CHARS:
            notes.append(f"kept the last {MAX_PROMPT_CHARS:,} of its {len(text):,} characters: the model continues "
                         f"from the end")
            text = text[-MAX_PROMPT_CHARS:]
        return {"text": text, "notes": notes}

    @app.post("/api/generate")
    async def generate(req: GenerateRequest, request: Request):
        """Server-sent events: queued?, start, step (each draft's new text) …, end (or error)."""
        notes = check_request(req, vocab, model.config.n_positions)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(options_of(req), req.prompt, notes, _thread_safe(loop, events))
        try:
            ahead = request.app.state.generator.submit(job)
        except queue.Full:
            return refuse(503, f"the server is busy (queue full: {waiting} waiting); try again in a moment",
                          **{"Retry-After": "5"})
        return StreamingResponse(_events(job, events, ahead), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def refuse(status: int, message: str, **headers: str) -> JSONResponse:
    """The API's one shape of a refusal, {"error": one line}, which the page shows as it is."""
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def body_limit(path: str) -> tuple[int, str]:
    """The most bytes a request to `path` may send, and the line that refuses more: an upload's, else a prompt's
    (every other route takes that small JSON body or none)."""
    if path == "/api/decode":
        return MAX_UPLOAD_BYTES, f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB; upload the part to continue"
    return MAX_REQUEST_BYTES, (f"the request is larger than {MAX_REQUEST_BYTES:,} bytes; a prompt takes at most "
                               f"{MAX_PROMPT_CHARS:,} characters (paste the end of the text)")


class BodyLimit:
    """Refuses a body over its route's `body_limit` before it is read whole: by its Content-Length at once, else
    (a chunked body) as soon as the bytes received pass the limit. Without it FastAPI reads /api/generate's body
    whole and pydantic parses it before any length check can run: a 180 MB prompt cost 410 MB of memory."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, message = body_limit(scope["path"].removeprefix(scope.get("root_path", "")))  # behind a proxy's prefix
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _drain(receive, DRAIN_BYTES)
            return await refuse(413, message)(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > limit:  # FastAPI re-raises an HTTPException from the body's reading: our 413 line
                if event.get("more_body", False):
                    await _drain(receive, DRAIN_BYTES - received)
                raise HTTPException(413, message)
            return event

        await self.app(scope, counted, send)


async def _drain(receive: Receive, budget: int) -> None:
    """Receive and drop the rest of a refused body, at most `budget` bytes of it: memory stays one chunk."""
    while budget > 0:
        event = await receive()
        if event["type"] != "http.request" or not event.get("more_body", False):
            return
        budget -= len(event.get("body", b""))


def _thread_safe(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[dict], None]:
    def send(event: dict) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
            loop.call_soon_threadsafe(events.put_nowait, event)

    return send


async def _events(job: Job, events: asyncio.Queue, ahead: int) -> AsyncIterator[str]:
    """The job's events as SSE frames; a client that goes away (a stop button, a closed tab) stops the job."""
    try:
        if ahead > 0:
            yield _frame({"type": "queued", "ahead": ahead})
        while True:
            event = await events.get()
            yield _frame(event)
            if event["type"] in ("end", "error"):
                return
    finally:
        job.stop.set()


def _frame(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _validation_line(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    return f"{where}: {error.get('msg', 'invalid')}{got}"


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # as uvicorn's own socket does: a port whose last connections linger in TIME_WAIT (a server stopped a
        # minute ago) is free to listen on; one another server listens on still is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            hint = f" (another server? try --port {port + 1})" if e.errno == errno.EADDRINUSE else ""
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None


def parser() -> argparse.ArgumentParser:
    """The command line of `gpt-novel serve` (the docs' commands are checked against it)."""
    parser = argparse.ArgumentParser(prog="gpt-novel serve", description="A web page that continues a novel with a "
                                     "consolidated model (tools/consolidate.py), drafts streamed side by side.")
    parser.add_argument("model_dir", metavar="HF_DIR", help="a folder written by tools/consolidate.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 lets anyone who reaches the port use the model)")
    parser.add_argument("--port", type=int, default=7860, help="default 7860")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE, help="requests that may wait for the model "
                        f"while one is generated; one more is refused with a message (default {DEFAULT_QUEUE})")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.queue < 1 or not 0 < args.port < 65536:
            raise UserError("need --queue ≥ 1 and a --port of 1…65535")
        _check_port(args.host, args.port)
        app = create_app(args.model_dir, args.device, args.dtype, args.queue)
    except (UserError, OSError) as e:
        print(f"gpt-novel serve: error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"gpt-novel serve: {args.model_dir} at http://{shown}:{args.port} (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    # a stream still open 5 s after Ctrl-C/SIGTERM is cut (its generation stops) rather than waited for
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
