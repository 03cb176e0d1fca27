"""cli/remote.py and cli/remote_predict.py without a server: retry waits, inputs, resume,
flags; and the retry rules against a stub that answers 503, drops a connection or
refuses (tests/cli/test_predict_remote.py runs the client against the real service)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import png_bytes

from cli.predict import get_args_parser, main
from cli.remote import AdaptiveLimit, RetryPolicy, parse_retry_after
from cli.remote_predict import UPLOAD_FIELD, collect_images, resume

ROOT = Path(__file__).parents[2]


def test_the_upload_field_is_the_services() -> None:
    from service.uploads import UPLOAD_FIELD as SERVICE_FIELD

    assert UPLOAD_FIELD == SERVICE_FIELD


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert 8 < parse_retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10
    assert parse_retry_after(formatdate(time.time() - 10, usegmt=True)) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_waits_follow_retry_after_capped_else_back_off_exponentially() -> None:
    policy = RetryPolicy(retries=5, max_wait_s=10.0, backoff_s=0.5)
    for _ in range(50):
        assert 2.0 <= policy.delay(0, 2.0) <= 2.5  # the server's wait, plus jitter
        assert policy.delay(0, 60.0) == 10.0  # capped
        assert 0.25 <= policy.delay(0, None) <= 0.5
        assert 2.0 <= policy.delay(3, None) <= 4.0  # 0.5 * 2**3, with jitter
        assert 5.0 <= policy.delay(9, None) <= 10.0  # capped, with jitter


def test_the_limit_halves_on_each_overload_and_grows_back_by_its_step() -> None:
    limit = AdaptiveLimit(4, step=0.5)
    for _ in range(4):
        limit.acquire()
    limit.release(overloaded=True)
    limit.release(overloaded=True)
    assert limit.limit == 1.0 and limit.in_flight == 2
    limit.release(overloaded=True)
    assert limit.limit == 1.0  # never below one
    waiting = threading.Thread(target=limit.acquire)
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive()  # one in flight, one allowed
    limit.release(overloaded=False)  # 1.5: still one at a time, and that one is free
    waiting.join(5)
    assert not waiting.is_alive() and limit.in_flight == 1
    limit.release(overloaded=False)
    for _ in range(10):
        limit.acquire()
        limit.release(overloaded=False)
    assert limit.limit == 4.0  # never above the maximum


def test_folders_give_their_image_files_sorted_and_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ("b/2.PNG", "b/1.jpg", "a.webp", "notes.txt", "c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    given = tmp_path / "missing.jpg"
    found = collect_images([tmp_path, tmp_path / "a.webp", given])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.webp", "b/1.jpg", "b/2.PNG", "c.jpeg", "missing.jpg"]


def _line(file: str, **extra: object) -> str:
    return json.dumps({"file": file, **extra}) + "\n"


def test_resume_keeps_results_and_drops_errors_and_a_cut_off_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    tiny = {"name": "tiny", "version": "1", "task": "classify"}
    kept = [_line("a.jpg", model=tiny, predictions=[]),
            _line("d.jpg", model={**tiny, "name": "other"}, predictions=[]),
            _line("e.jpg", model={**tiny, "task": "detect"}, detections=[]),
            "not json, not ours: kept\n"]
    out.write_text(kept[0] + _line("b.jpg", error={"status": 400}) + "".join(kept[1:])
                   + '{"file": "c.jpg", "mod')
    assert resume(out, "classify", None) == {os.path.abspath(f) for f in ("a.jpg", "d.jpg")}
    assert out.read_text() == "".join(kept)
    assert resume(out, "classify", "tiny") == {os.path.abspath("a.jpg")}
    assert resume(out, "detect", None) == {os.path.abspath("e.jpg")}
    assert resume(tmp_path / "none.jsonl", "classify", None) == set()


@pytest.mark.parametrize(("flags", "problem"), [
    (["--concurrency", "2"], "--concurrency: only with --url"),
    (["--url", "http://h", "--device", "cpu"], "--device: only without --url"),
    (["--url", "http://h", "--conf", "0.5"], "--conf: only with --task detect"),
    (["--url", "http://h", "--task", "detect", "--top-k", "2"], "--top-k: only with --task "
                                                                 "classify"),
])
def test_flags_of_the_other_mode_or_task_are_refused(flags: list[str], problem: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(get_args_parser().parse_args(["x.jpg", *flags]))
    assert exited.value.code == 2
    assert problem in capsys.readouterr().err


# The stub's answers to each POST, in turn (the last one repeats): 503s, a dropped
# connection, a 4xx. The client's own behaviour is what is under test.
STUB_RESULT = {"model": {"name": "stub", "version": "1", "task": "classify"},
               "results": [{"filename": "a.png", "width": 48, "height": 48,
                            "predictions": [{"label": "red", "index": 0, "score": 0.9}]}]}
SCRIPTS = {
    "/v1/classify": ["drop", (503, {"Retry-After": "1"}), (503, {"Retry-After": "1"}), 200],
    "/v1/detect": [(422, {})],
}


class _Stub(BaseHTTPRequestHandler):
    posts: dict[str, list[float]]

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {**headers, "Content-Type": "application/json",
                           "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json(200, {"models": [{"name": "stub", "task": "classify"},
                                    {"name": "stubdet", "task": "detect"}]}, {})

    def do_POST(self) -> None:
        route = self.path.split("?")[0]
        self.rfile.read(int(self.headers["Content-Length"]))
        times = self.posts.setdefault(route, [])
        times.append(time.monotonic())
        answer = SCRIPTS[route][min(len(times), len(SCRIPTS[route])) - 1]
        if answer == "drop":
            self.close_connection = True  # no answer at all: a connection error
        elif answer == 200:
            self._json(200, STUB_RESULT, {})
        else:
            status, headers = answer
            self._json(status, {"error": {"status": status, "code": "stubbed",
                                          "message": "as scripted"}}, headers)


@pytest.fixture()
def stub() -> Iterator[tuple[str, dict[str, list[float]]]]:
    posts: dict[str, list[float]] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Stub", (_Stub,), {"posts": posts}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", posts
    server.shutdown()
    server.server_close()


def _predict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "predict", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # waits out the stub's Retry-After twice
def test_connection_errors_and_503_are_retried_after_retry_after(stub, tmp_path: Path) -> None:
    url, posts = stub
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    done = _predict("--url", url, str(image), "--retries", "3")
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(s) for s in done.stdout.splitlines()]
    assert line == {"file": str(image), "model": STUB_RESULT["model"],
                    **STUB_RESULT["results"][0]}
    times = posts["/v1/classify"]
    assert len(times) == 4  # dropped, 503, 503, 200
    assert times[2] - times[1] >= 1.0 and times[3] - times[2] >= 1.0  # Retry-After: 1


@pytest.mark.slow
def test_retries_run_out_into_an_error_line_and_4xx_is_never_retried(stub,
                                                                     tmp_path: Path) -> None:
    url, posts = stub
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    done = _predict("--url", url, str(image), "--retries", "1")  # dropped, then a 503
    assert done.returncode == 1
    (line,) = [json.loads(s) for s in done.stdout.splitlines()]
    assert line["error"] == {"status": 503, "code": "stubbed", "message": "as scripted"}
    done = _predict("--url", url, "--task", "detect", str(image), "--retries", "5")
    assert done.returncode == 1
    (line,) = [json.loads(s) for s in done.stdout.splitlines()]
    assert line["error"]["status"] == 422
    assert len(posts["/v1/detect"]) == 1
