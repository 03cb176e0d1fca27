"""``ocellus predict --url``: send image files to a running server, one JSON line per image.

Each image is its own request (``POST /v1/<task>`` with one ``file`` part), so
one bad image costs one error line, and a refused request is retried alone.
Requests run in a bounded thread pool; lines are written as answers come, in
completion order. With ``--out``, a run resumes: images that the file already
records a result for are skipped, and the ones that failed are tried again.

A line is ``{"file", "model": {name, version, task}, "filename", "width",
"height", "predictions" | "detections"}`` (the server's result for the image),
or ``{"file", "error": {"status", "code", "message"}}``. Errors found here, not
by the server, have ``status`` null: ``unreadable`` (the file) and
``connection_error`` (no answer after every retry); an answer that is not the
API's JSON is ``bad_response``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TextIO

from cli.remote import Client, RemoteError, RetryPolicy, encode_multipart
from models.tasks import get_task

log = logging.getLogger(__name__)

# The multipart part the inference routes read (service/uploads.py's UPLOAD_FIELD, which a
# test keeps equal): stated here so that a client imports no server code.
UPLOAD_FIELD = "file"
# Each task's query options that have a flag here, by the flag's argparse dest.
TASK_OPTIONS: dict[str, tuple[str, ...]] = {"classify": ("top_k",), "detect": ("conf", "iou")}
# Every flag of `add_arguments`, for `cli.predict` to refuse without --url.
OPTIONS = ("url", "task", "conf", "iou", "api_key", "concurrency", "timeout", "retries",
           "out", "overwrite", "progress")
DEFAULT_TASK = "classify"
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT_S = 60.0


def _url(text: str) -> str:
    try:
        Client(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least {minimum}, got {text!r}")
        return int(text)
    return parse


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return seconds


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of a run against a server (every one in `OPTIONS`), as a group of `p`."""
    g = p.add_argument_group("on a running server (with --url)")
    g.add_argument("--url", type=_url, default=None,
                   help="the server's base URL, e.g. http://127.0.0.1:8000; IMAGES may then "
                        "name folders too (their image files, recursively)")
    g.add_argument("--task", choices=sorted(TASK_OPTIONS), default=None,
                   help=f"the route: POST /v1/classify or /v1/detect (default {DEFAULT_TASK})")
    g.add_argument("--conf", type=float, default=None, help="detect: score threshold")
    g.add_argument("--iou", type=float, default=None, help="detect: NMS IoU threshold")
    g.add_argument("--api-key", default=None,
                   help="sent as X-API-Key (default: $OCELLUS_API_KEY, if set)")
    g.add_argument("--concurrency", type=_at_least(1), default=None,
                   help=f"requests at once (default {DEFAULT_CONCURRENCY})")
    g.add_argument("--timeout", type=_seconds, default=None,
                   help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT_S:g})")
    g.add_argument("--retries", type=_at_least(0), default=None,
                   help=f"retries of a 502/503/504 or a connection error; a 503 waits its "
                        f"Retry-After, at most {RetryPolicy.max_wait_s:g} s "
                        f"(default {RetryPolicy.retries})")
    g.add_argument("--out", type=Path, default=None,
                   help="append the lines to this JSONL file instead of stdout, and resume: "
                        "skip the images it records a result for, drop its error lines and "
                        "try those images again")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="empty --out first instead of resuming")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress line on stderr (default: when stderr is a terminal)")


def collect_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and each folder's image files (recursively, sorted); each once."""
    images: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            from models.imaging import IMAGE_SUFFIXES  # imports torch: only for a folder

            found = sorted(f for f in path.rglob("*")
                           if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        else:
            found = [path]  # a missing file gets an error line, as an unreadable one does
        for f in found:
            images.setdefault(os.path.abspath(f), f)
    return list(images.values())


def _succeeded(record: Any, task: str, model: str | None) -> bool:
    served = record.get("model") if isinstance(record, dict) and "error" not in record else None
    return (isinstance(served, dict) and "file" in record and served.get("task") == task
            and model in (None, served.get("name")))


def resume(out: Path, task: str, model: str | None) -> set[str]:
    """The files (absolute paths) that `out` records a `task` result for, by `model` if named.

    `out` loses its error lines (those images will be tried again) and a last line
    cut short by an interruption; every other line is kept as it was.
    """
    if not out.exists():
        return set()
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    kept: list[str] = []
    done: set[str] = set()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
            if not line.endswith("\n"):  # only the last line can lack one: a cut-off write
                continue
        if isinstance(record, dict) and "file" in record and "error" in record:
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
        if _succeeded(record, task, model):
            done.add(os.path.abspath(record["file"]))
    if kept != lines:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, out)
    return done


def check_server(client: Client, task: str, model: str | None) -> None:
    """Fail before any upload when the server cannot be reached, refuses the API key, or
    serves no `task` model (named `model`, if given).

    Raises:
        RemoteError: Any of those, with what the server said or serves.
    """
    reply = client.request("GET", "/v1/models")
    if reply.status != 200:
        error = reply.error()
        raise RemoteError(f"GET {client.url}/v1/models answered {error['status']} "
                          f"{error['code']}: {error['message']}")
    try:
        served = [(m["name"], m["task"]) for m in reply.json()["models"]]
    except (ValueError, TypeError, KeyError):
        raise RemoteError(f"expected an Ocellus server at {client.url}: GET /v1/models "
                          f"answered no model list") from None
    if not served:
        return  # still loading: the inference routes answer 503 "loading", which is retried
    if (model, task) not in served and (model is not None or task not in dict(served).values()):
        wanted = f"a {task} model" + (f" named {model!r}" if model else "")
        raise RemoteError(f"expected {wanted} at {client.url}; it serves "
                          + ", ".join(f"{name} ({kind})" for name, kind in served))


def _error(path: Path, status: int | None, code: str, message: str) -> dict[str, Any]:
    return {"file": str(path), "error": {"status": status, "code": code, "message": message}}


def predict_image(client: Client, path: Path, route: str, params: dict[str, Any]) -> dict[str, Any]:
    """POST one image to `route`; its JSON line, a result or an error (never raises for one)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _error(path, None, "unreadable", f"cannot read {path}: {exc.strerror or exc}")
    body, content_type = encode_multipart(UPLOAD_FIELD, path.name, data)
    try:
        reply = client.request("POST", route, params=params, body=body,
                               headers={"Content-Type": content_type})
    except RemoteError as exc:
        return _error(path, None, "connection_error", str(exc))
    if reply.status != 200:
        return {"file": str(path), "error": reply.error()}
    try:
        answer = reply.json()
        (result,) = answer["results"]  # one file sent, one result
        return {"file": str(path), "model": answer["model"], **result}
    except (ValueError, TypeError, KeyError):
        return _error(path, reply.status, "bad_response", f"expected JSON with a model and "
                      f"one result, got {reply.body[:200]!r}")


def predict_all(work: Callable[[Path], dict[str, Any]], paths: Sequence[Path], *,
                concurrency: int) -> Iterator[dict[str, Any]]:
    """``work(path)`` for every path on `concurrency` threads; the records as they complete.

    At most twice `concurrency` paths are submitted at a time, so a run over a
    million files holds a few futures, not a million.
    """
    todo = iter(paths)
    pending: set[Future[dict[str, Any]]] = set()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="predict")
    try:
        while True:
            for path in itertools.islice(todo, 2 * concurrency - len(pending)):
                pending.add(pool.submit(work, path))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        # Interrupted: what has not started never will, and the caller is not kept waiting
        # for the requests in flight (they end by themselves, `work`'s to bound).
        pool.shutdown(wait=False, cancel_futures=True)


class Progress:
    """``done/total  rate  failed  ETA`` on one stderr line, redrawn in place (``\\r``)."""

    def __init__(self, total: int, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.done = self.failed = 0
        self.started = self._drawn_at = time.monotonic()
        self._width = 0

    def update(self, *, failed: bool) -> None:
        """Count one image done; redraw at most ten times a second, and at the last."""
        self.done += 1
        self.failed += failed
        if self.enabled and (self.done == self.total
                             or time.monotonic() - self._drawn_at >= 0.1):
            self._draw()

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        rate = self.done / max(self._drawn_at - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (f"{self.done}/{self.total} images  {rate:.1f} img/s  {self.failed} failed  "
                f"ETA {eta:.0f} s")
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def close(self) -> None:
        """End the line, so that what stderr prints next starts on its own."""
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()


def main(args: argparse.Namespace) -> int:
    """Run `args` (see `add_arguments`); 0 when every image has a result, 1 when some failed,
    2 when there is nothing to send, 130 when interrupted."""
    task = get_task(args.task or DEFAULT_TASK)
    stop = threading.Event()
    retry = RetryPolicy() if args.retries is None else RetryPolicy(retries=args.retries)
    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    client = Client(args.url, api_key=args.api_key or os.environ.get("OCELLUS_API_KEY"),
                    timeout=args.timeout or DEFAULT_TIMEOUT_S, retry=retry,
                    max_in_flight=concurrency, stop=stop)
    images = collect_images(args.images)
    if not images:
        log.error("no image files in %s", ", ".join(map(str, args.images)))
        return 2
    resuming = args.out is not None and not args.overwrite
    done = resume(args.out, task.name, args.model) if resuming else set()
    todo = [p for p in images if os.path.abspath(p) not in done]
    if todo:
        check_server(client, task.name, args.model)
    params = {"model": args.model, **{n: getattr(args, n) for n in TASK_OPTIONS[task.name]}}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    sink = (sys.stdout if args.out is None
            else open(args.out, "a" if resuming else "w", encoding="utf-8"))  # noqa: SIM115
    progress = Progress(len(todo), enabled=sys.stderr.isatty() if args.progress is None
                        else args.progress)
    started = time.monotonic()
    try:
        for record in predict_all(lambda path: predict_image(client, path, task.route, params),
                                  todo, concurrency=concurrency):
            sink.write(json.dumps(record) + "\n")
            sink.flush()  # a line written is a line kept: an interrupted run resumes after it
            progress.update(failed="error" in record)
    except KeyboardInterrupt:
        stop.set()  # ends the retries' waits, so the threads finish their current request only
        progress.close()
        log.warning("interrupted after %d of %d images%s", progress.done, len(todo),
                    "; run again to resume" if args.out else "")
        return 130
    finally:
        if sink is not sys.stdout:
            sink.close()
    progress.close()
    skipped = f", {len(images) - len(todo)} skipped (already in {args.out})" if resuming else ""
    log.info("%d images: %d with a result, %d failed%s, in %.1f s", len(images),
             progress.done - progress.failed, progress.failed, skipped,
             time.monotonic() - started)
    return 1 if progress.failed else 0
