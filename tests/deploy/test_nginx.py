"""Debian's nginx in front of Ocellus replicas, with deploy/nginx/ocellus.conf.

- Stub replicas: a replica's 503 passes through with its Retry-After. An inference
  POST that a replica received and dropped is sent to another replica; an admin
  rollback is not. nginx's own failure answers 503 with Retry-After.
- Three real replicas: a real Prometheus adds up what nginx spread over them. Each
  replica's count is what nginx's log says that replica answered.
- Client threads classify through nginx while one replica is SIGKILLed and another
  SIGTERMed. No request fails, and requests keep flowing on the last replica.

The failure test runs last in the module: it leaves one replica of the three.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from helpers import QUICK_START, free_port, png_bytes, prometheus_query, prometheus_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy/nginx/ocellus.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLASSIFY = "/v1/classify"
# One intra-op thread each: three replicas share the machine's cores.
ENV = {**QUICK_START, "OCELLUS_TORCH_THREADS": "1"}
OK_PROMQL = f'ocellus_http_requests_total{{route="{CLASSIFY}",status="200"}}'

# The test's own nginx.conf around the shipped file: one worker, run as this user, and
# every file nginx writes in the temp prefix (-p) that it runs in.
WRAPPER = """\
{user}
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    include ocellus.conf;
}}
"""


def render_config(text: str, *, listen: str, replicas: list[str], access_log: Path) -> str:
    """The shipped config with the lines marked "test:" rewritten: the replicas'
    addresses (their parameters kept), the listen address and the access log's path."""
    block = re.search(r"# BEGIN replicas.*?\n(.*?)\n\s*# END replicas", text, re.S)
    assert block is not None, "no BEGIN/END replicas block in the config"
    lines = block.group(1).splitlines()
    assert len(lines) == len(replicas), f"{len(replicas)} replicas for {len(lines)} lines"
    servers = "\n".join(re.sub(r"server \S+", f"server {addr}", line)
                        for line, addr in zip(lines, replicas, strict=True))
    text = text[:block.start(1)] + servers + text[block.end(1):]
    text, n = re.subn(r"listen \S+;(?= +# test:)", f"listen {listen};", text)
    assert n == 1, "one `listen ...;  # test:` line expected"
    text, n = re.subn(r"access_log \S+ (\w+);(?= +# test:)",
                      lambda m: f"access_log {access_log} {m.group(1)};", text)
    assert n == 1, "one `access_log ...;  # test:` line expected"
    return text


class Nginx:
    """Debian's nginx, as this user, in front of `replicas` ("host:port")."""

    def __init__(self, replicas: list[str], folder: Path) -> None:
        if not Path(NGINX).exists():
            pytest.fail("Debian's nginx is missing: run `make system-deps`")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = folder / "access.log"
        self.error_log = folder / "nginx.log"
        (folder / "ocellus.conf").write_text(render_config(
            CONF.read_text(), listen=f"127.0.0.1:{self.port}", replicas=replicas,
            access_log=self.access_log))
        # A master started as root would run its workers as `nobody`, who cannot write
        # in the temp folder.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        (folder / "nginx.conf").write_text(WRAPPER.format(user=user))
        with open(self.error_log, "wb") as log:
            self.proc = subprocess.Popen(
                [NGINX, "-p", f"{folder}/", "-c", str(folder / "nginx.conf"), "-e", "stderr",
                 "-g", f"daemon off; pid {folder / 'nginx.pid'};"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"nginx did not start:\n{self.error_log.read_text()}")
                time.sleep(0.05)

    def entries(self, at_least: int = 0) -> list[dict]:
        """The access log, one dict per request (the config's JSON log_format).

        nginx writes a request's line after its answer has gone out, so a client can
        read the answer first: wait (up to 5 s) until `at_least` lines are there.
        """
        deadline = time.monotonic() + 5
        while True:
            lines = self.access_log.read_text().splitlines()
            if len(lines) >= at_least or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextmanager
def running_nginx(replicas: list[str], folder: Path) -> Iterator[Nginx]:
    nginx = Nginx(replicas, folder)
    try:
        yield nginx
    finally:
        nginx.stop()


def tries(entry: dict) -> list[str]:
    """The replicas a request was sent to, in order; the last one answered."""
    return entry["upstream_addr"].split(", ")


def answered_by(entries: list[dict]) -> Counter:
    """Per replica, the classify requests it answered 200 (as nginx logged them)."""
    return Counter(tries(e)[-1] for e in entries if e["uri"] == CLASSIFY and e["status"] == 200)


def _classify(url: str, client: httpx.Client | None = None) -> httpx.Response:
    post = client.post if client is not None else httpx.post
    return post(f"{url}{CLASSIFY}", files={"file": ("x.png", png_bytes(), "image/png")},
                timeout=60)


# --- stub replicas: what the config does with a replica's answer ---------------------

@contextmanager
def stub_replicas(answer: bytes | None, n: int = 3) -> Iterator[tuple[list[str], list[int]]]:
    """`n` fake replicas that read a request, then send `answer` (a raw HTTP response)
    or, when None, close without a word, as a replica killed mid-request does.

    Yields their addresses, and how many requests each has read.
    """
    seen = [0] * n

    def handler_for(i: int) -> type[socketserver.StreamRequestHandler]:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.rfile.read(length)
                seen[i] += 1
                if answer is not None:
                    self.wfile.write(answer)
        return Handler

    servers = [socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler_for(i))
               for i in range(n)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [f"127.0.0.1:{s.server_address[1]}" for s in servers], seen
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_replicas_503_passes_through_with_its_retry_after(tmp_path) -> None:
    body = b'{"error": {"status": 503, "code": "overloaded", "message": "stub"}}'
    answer = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              b"Retry-After: 7\r\nConnection: close\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with stub_replicas(answer) as (addrs, seen), running_nginx(addrs, tmp_path) as nginx:
        r = _classify(nginx.url)
        (entry,) = nginx.entries(at_least=1)
    assert r.status_code == 503 and r.headers["retry-after"] == "7", r.headers
    assert r.content == body
    # Tried on each replica (proxy_next_upstream_tries 3); the last 503 is the answer.
    assert seen == [1, 1, 1] and entry["upstream_status"] == "503, 503, 503", entry


def test_inference_is_resent_to_another_replica_an_admin_rollback_is_not(tmp_path) -> None:
    with stub_replicas(None) as (addrs, seen), running_nginx(addrs, tmp_path) as nginx:
        infer = _classify(nginx.url)
        rollback = httpx.post(f"{nginx.url}/v1/models/tiny/rollback", timeout=30)
        entries = nginx.entries(at_least=2)
    # Every replica received the classify request (non_idempotent); one the rollback.
    assert [len(tries(e)) for e in entries] == [3, 1], entries
    assert sum(seen) == 4, seen
    for r in (infer, rollback):  # nginx's own answer: no replica answered
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.headers
        assert r.json()["error"]["code"] == "no_replica", r.text


# --- three real replicas --------------------------------------------------------------

@pytest.fixture(scope="module")
def replicas(start_replicas, tiny_exports):
    return start_replicas(3, "--model", str(tiny_exports[0]), env=ENV)


def _addr(server) -> str:
    return server.url.removeprefix("http://")


@pytest.fixture(scope="module")
def nginx(replicas, tmp_path_factory) -> Iterator[Nginx]:
    with running_nginx([_addr(r) for r in replicas], tmp_path_factory.mktemp("nginx")) as n:
        yield n


@pytest.fixture(scope="module")
def prometheus(replicas, tmp_path_factory) -> Iterator[str]:
    with prometheus_server([_addr(r) for r in replicas],
                           tmp_path_factory.mktemp("prometheus")) as url:
        yield url


class Load:
    """`clients` threads, each POSTing /v1/classify through `url` in a loop on its own
    keep-alive connection, until it has sent `per_client` requests, `seconds` have
    passed or `stop()` is called."""

    def __init__(self, url: str, *, clients: int, per_client: int, seconds: float) -> None:
        self.results: list[tuple[float, str]] = []  # (monotonic end time, "200" or what)
        self._stop = threading.Event()
        deadline = time.monotonic() + seconds

        def client() -> None:
            with httpx.Client() as http:
                for _ in range(per_client):
                    if self._stop.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        r = _classify(url, http)
                        outcome = "200" if r.status_code == 200 else f"{r.status_code} {r.text}"
                    except httpx.TransportError as exc:
                        outcome = f"{type(exc).__name__}: {exc}"
                    self.results.append((time.monotonic(), outcome))

        self._threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> list[tuple[float, str]]:
        for thread in self._threads:
            thread.join(120)
        return self.results


def _wait_per_instance(url: str, promql: str, want: dict[str, float],
                       timeout: float = 20) -> dict[str, float]:
    """Poll `sum by (instance) (promql)` until the instances in `want` have its values;
    bounded. Returns every instance's value."""
    deadline, got = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        got = {r["metric"]["instance"]: float(r["value"][1])
               for r in prometheus_query(url, f"sum by (instance) ({promql})")}
        if all(got.get(instance) == value for instance, value in want.items()):
            break
        time.sleep(0.5)
    return got


def test_prometheus_adds_up_what_nginx_spread(nginx, prometheus, replicas) -> None:
    deadline = time.monotonic() + 20
    while prometheus_query(prometheus, 'count(up{job="ocellus"} == 1) == 3') == []:
        assert time.monotonic() < deadline, "Prometheus never saw the three replicas up"
        time.sleep(0.3)
    before = len(nginx.entries())
    results = Load(nginx.url, clients=4, per_client=20, seconds=30).join()
    sent = len(results)
    assert sent == 80 and all(o == "200" for _, o in results), Counter(o for _, o in results)
    entries = nginx.entries(at_least=before + sent)
    assert len(entries) - before == sent  # nginx logged each request once
    want = {addr: float(n) for addr, n in answered_by(entries).items()}
    assert len(want) == 3, f"least_conn sent requests to {sorted(want)} only"
    got = _wait_per_instance(prometheus, OK_PROMQL, want)  # every instance: `want` has 3
    total = prometheus_query(prometheus, f"sum({OK_PROMQL})")[0]["value"][1]
    print(f"\nnginx → 3 replicas: {sent} requests, split {sorted(want.values())}; "
          f"Prometheus: sum {total}, per replica {sorted(got.values())}")
    assert got == want
    assert float(total) == sum(want.values())


def test_no_request_fails_while_replicas_are_killed_and_terminated(
        nginx, prometheus, replicas) -> None:
    killed, terminated, survivor = replicas
    before = len(nginx.entries())
    start = time.monotonic()
    load = Load(nginx.url, clients=6, per_client=3000, seconds=40)
    time.sleep(3)
    t_kill = time.monotonic()
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(10)
    time.sleep(3)
    t_term = time.monotonic()
    terminated.proc.send_signal(signal.SIGTERM)
    terminated.proc.wait(30)  # drains what it holds, then exits
    t_gone = time.monotonic()
    time.sleep(3)
    load.stop()
    results = load.join()
    elapsed = time.monotonic() - start

    outcomes = Counter(o for _, o in results)
    after_kill = sum(t > t_kill for t, _ in results)
    after_gone = sum(t > t_gone for t, _ in results)
    entries = nginx.entries(at_least=before + len(results))[before:]
    retried = [e for e in entries if len(tries(e)) > 1]
    errors = nginx.error_log.read_text()
    refused = errors.count("Connection refused")
    dropped = errors.count("prematurely closed") + errors.count("reset by peer")
    split = answered_by(entries)
    print(f"\nfailures under load: {len(results)} requests in {elapsed:.1f} s, "
          f"{outcomes['200']} answered 200, {len(results) - outcomes['200']} failed; "
          f"{after_kill} after the SIGKILL, {after_gone} after the SIGTERMed replica "
          f"exited ({t_gone - t_term:.1f} s of drain); answered by killed/terminated/survivor: "
          f"{split[_addr(killed)]}/{split[_addr(terminated)]}/{split[_addr(survivor)]}; "
          f"nginx resent {len(retried)} requests to another replica "
          f"({refused} connections refused, {dropped} dropped by a replica)")
    assert outcomes["200"] == len(results), outcomes
    assert after_kill >= 20 and after_gone >= 20, (after_kill, after_gone)
    assert "Application shutdown complete" in terminated.log.read_text()
    assert len(entries) == len(results) and all(e["status"] == 200 for e in entries)
    assert retried, "no request was resent: the failures were not seen"

    # Prometheus: the survivor's count is exact. The dead replicas' last scrapes miss
    # what they answered after them, and never count more.
    want = {addr: float(n) for addr, n in answered_by(nginx.entries()).items()}
    last = _wait_per_instance(prometheus, f"last_over_time({OK_PROMQL}[5m])",
                              {_addr(survivor): want[_addr(survivor)]})
    print("Prometheus' last value / nginx's count: " + ", ".join(
        f"{name} {last.get(_addr(r))}/{want[_addr(r)]}"
        for name, r in (("killed", killed), ("terminated", terminated),
                        ("survivor", survivor))))
    assert last[_addr(survivor)] == want[_addr(survivor)]
    for dead in (killed, terminated):
        assert 0 < last[_addr(dead)] <= want[_addr(dead)]
