"""An HTTP client for a running Ocellus server, on the standard library alone.

`Client` sends requests over one keep-alive connection per thread (so it can
be shared by a thread pool) and retries what is worth retrying: 502, 503 and
504 (the service answers 503 with ``Retry-After`` when overloaded, timed out or
still loading) and connection errors. Other 4xx and 5xx answers are returned
at once: asking again would get the same answer. While the server refuses,
`AdaptiveLimit` sends fewer requests at once. `encode_multipart` builds the
``multipart/form-data`` body that the inference routes read.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import mimetypes
import random
import secrets
import threading
import time
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import urlencode, urlsplit

from models.errors import OcellusError

# Worth asking again: the service's 503 (overloaded, timeout, loading), a proxy's 502 and 504.
RETRY_STATUSES = frozenset({502, 503, 504})
USER_AGENT = "ocellus-predict"


class RemoteError(OcellusError):
    """The server could not be reached, or refused to serve this client."""


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, read whole."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON (raises `ValueError` when it is not)."""
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The service's ``{"status", "code", "message"}`` error, or one made from the body
        when the answer is not in that shape (from a proxy, say)."""
        try:
            error = self.json()["error"]
            return {"status": int(error["status"]), "code": str(error["code"]),
                    "message": str(error["message"])}
        except (ValueError, TypeError, KeyError):
            text = self.body.decode("utf-8", "replace").strip()
            return {"status": self.status, "code": "http_error",
                    "message": f"HTTP {self.status}: {text[:500] or '(empty body)'}"}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before asking again.

    Attributes:
        retries: Attempts after the first.
        max_wait_s: The longest wait before one retry, whatever ``Retry-After`` says.
        backoff_s: The first wait without a ``Retry-After``; it doubles each retry.
    """

    retries: int = 5
    max_wait_s: float = 30.0
    backoff_s: float = 0.5

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt `attempt` (0 = the first).

        The server's ``Retry-After`` when it gave one, else exponential backoff;
        either with jitter, so that clients told to wait alike do not all come
        back at the same instant.
        """
        if retry_after is not None:
            return min(self.max_wait_s, retry_after * random.uniform(1.0, 1.25))
        return min(self.max_wait_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)


class AdaptiveLimit:
    """How many requests may be in flight: at most `maximum`, halved on each overload
    answer and grown back by `step` per success (additive increase, multiplicative
    decrease, as TCP's congestion window).

    A client that sends more at once than the server takes gets 503s; without this,
    the threads whose requests were refused wait their ``Retry-After`` while the
    others keep the server full, and can be refused again and again until their
    retries run out.
    """

    def __init__(self, maximum: int, *, step: float = 0.1) -> None:
        self.maximum, self.step = maximum, step
        self.limit = float(maximum)
        self.in_flight = 0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        """Wait until one more request may be sent, and count it in flight."""
        with self._cond:
            while self.in_flight >= max(1, int(self.limit)):
                self._cond.wait()
            self.in_flight += 1

    def release(self, *, overloaded: bool) -> None:
        """Count a request answered; `overloaded`: by a 502/503/504, or not at all."""
        with self._cond:
            self.in_flight -= 1
            self.limit = (max(1.0, self.limit / 2) if overloaded
                          else min(float(self.maximum), self.limit + self.step))
            self._cond.notify_all()


def encode_multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """One file part as a ``multipart/form-data`` body → ``(body, content_type)``.

    The filename is escaped as browsers do (WHATWG): ``"``, CR and LF percent-encoded.
    """
    boundary = f"ocellus-{secrets.token_hex(16)}"
    quoted = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    media_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    head = (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{quoted}"\r\n'
            f"Content-Type: {media_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


class Client:
    """Requests to one Ocellus server, with retries; safe to share between threads.

    Args:
        url: The server's base URL (``http://127.0.0.1:8000``; a path prefix is kept).
        api_key: Sent as ``X-API-Key`` when the server has keys.
        timeout: Seconds to connect, and to wait for each read.
        retry: When and how long to wait before asking again.
        max_in_flight: Requests at once, at most (None: no bound); fewer while the server
            answers 502/503/504 (`AdaptiveLimit`).
        stop: Once set, waits end and no retry is made (Ctrl-C).

    Raises:
        ValueError: `url` is not an http or https URL.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, max_in_flight: int | None = None,
                 stop: threading.Event | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL such as "
                             f"http://127.0.0.1:8000, got {url!r}")
        self.url = url.rstrip("/")
        self._connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                                  else http.client.HTTPConnection)
        self._netloc = parts.netloc.rpartition("@")[2]
        self._prefix = parts.path.rstrip("/")
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            self._headers["X-API-Key"] = api_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.stop = stop or threading.Event()
        self._limit = None if max_in_flight is None else AdaptiveLimit(max_in_flight)
        self._local = threading.local()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        """Send a request, retrying 502/503/504 and connection errors; return the last answer.

        Args:
            path: The route (``/v1/classify``), after the URL's own path.
            params: Query parameters; None values are left out.

        Raises:
            RemoteError: No answer after every retry (or `stop` was set while waiting).
        """
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        target = self._prefix + path + (f"?{query}" if query else "")
        headers = {**self._headers, **(headers or {})}
        attempt = 0
        while True:
            failure: Exception | None = None
            try:
                reply = self._send_within_limit(method, target, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                failure, retry_after = exc, None
            else:
                if reply.status not in RETRY_STATUSES or attempt >= self.retry.retries:
                    return reply
                retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            if (attempt >= self.retry.retries
                    or self.stop.wait(self.retry.delay(attempt, retry_after))):
                raise RemoteError(f"{method} {self.url}{path}: no answer after "
                                  f"{attempt + 1} attempt(s): {failure or 'interrupted'}")
            attempt += 1

    def _send_within_limit(self, method: str, target: str, body: bytes | None,
                           headers: dict[str, str]) -> Reply:
        if self.stop.is_set():
            raise InterruptedError("stopped")
        if self._limit is None:
            return self._send(method, target, body, headers)
        self._limit.acquire()
        overloaded = True  # a connection error counts as one
        try:
            reply = self._send(method, target, body, headers)
            overloaded = reply.status in RETRY_STATUSES
            return reply
        finally:
            self._limit.release(overloaded=overloaded)

    def _send(self, method: str, target: str, body: bytes | None,
              headers: dict[str, str]) -> Reply:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = self._local.conn = self._connection_class(self._netloc, timeout=self.timeout)
        try:
            # The server may answer (413, 503) and close before reading the whole body: a
            # broken pipe while sending, and then its answer to read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        except ConnectionError:
            self._drop()
            if reused:  # a keep-alive connection that the server had closed: once more, anew
                return self._send(method, target, body, headers)
            raise
        except (OSError, http.client.HTTPException):
            self._drop()
            raise
        if response.will_close or reply.status >= 400:
            self._drop()  # after an error the server may not have read the body: start clean
        return reply

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
