"""The HTTP server under routined's app: uvicorn, with the bounds one client may hold (a
request's head and body must keep coming), a listening socket no child inherits, and
signals that end the process only once everything else has stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import threading
from collections.abc import Iterator
from http import HTTPStatus
from types import FrameType
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# What one HTTP client may hold (see `_BoundedHttp` and docs/api.md, "Limits").
MAX_CONNECTIONS = 1024  # held at once; fewer when the process may open fewer descriptors
HEAD_TIMEOUT = 10.0  # seconds for a request's line and headers, from their first byte
MAX_HEAD = 64 * 1024  # bytes of a request's line and headers
BODY_WINDOW = 10.0  # seconds; a body must bring BODY_MIN_BYTES (or its end) in each
BODY_MIN_BYTES = 8 * 1024
# The soft descriptor limit `serve` raises itself to (never past the hard one): room
# for MAX_CONNECTIONS and the process's own files, without handing every git and
# sandbox process it starts a limit of a million.
WANTED_DESCRIPTORS = 65_536


def bind(host: str, port: int) -> socket.socket:
    """Bind first, so the real port (for `--port 0`) is known before the app is built."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio then turns Nagle off on accepted connections, and a
    # response's body does not wait 40 ms for the client's delayed acknowledgement.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    # Never inherited (sockets are not, unless asked): a child holding it could
    # accept another caller's request, and would keep the port after a crash.
    listener.set_inheritable(False)
    return listener


class _Server(uvicorn.Server):
    """uvicorn's server, but the signal that stops it is raised again only once
    everything else has stopped too: uvicorn raises it as soon as it has stopped
    serving, which would end the process before the matcher process is stopped
    and the store closed."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopped_by: list[int] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread receives signals
            return
        stopping = (signal.SIGINT, signal.SIGTERM)
        previous = {number: signal.signal(number, self._stop) for number in stopping}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _stop(self, number: int, frame: FrameType | None) -> None:
        self.stopped_by.append(number)
        self.handle_exit(number, frame)


def more_descriptors() -> None:
    """Raise the soft descriptor limit towards the hard one: systemd and many shells
    start services at 1,024, which a burst of clients would use up, and then the
    server could open no store file, pipe or socket of its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, WANTED_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:  # a kernel below our wish (nr_open)
            log.warning(
                "could not raise the open files limit from %d to %d: %s", soft, wanted, error
            )


def connection_cap() -> int:
    """How many connections `serve` holds at once: MAX_CONNECTIONS, or half the
    descriptors the process may open if that is fewer, the other half being for its own
    files (the store, git, sandboxes). Read for each connection: an operator may lower
    the limit of a running server (`prlimit`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 2))


class _BoundedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), with the bounds uvicorn lacks: a
    client holds a connection only while it sends what it has begun.

    uvicorn (0.55) times out only idle keep-alive connections: a request head sent a
    byte at a time, or a body that stops one byte short, is held for ever. Here:

    - at most `connection_cap()` connections are held; one past that is answered 503
      and closed as soon as it is accepted;
    - a request's line and headers must arrive within HEAD_TIMEOUT of their first
      byte (of the connection's start, for its first request) and fit in MAX_HEAD
      bytes, else 408 or 431 and the connection is closed;
    - a body must bring BODY_MIN_BYTES, or its end, in every BODY_WINDOW, else 408:
      a trickle is as good as a stall. While the app does not read (its buffer is
      full, or it has not yet asked for a body sent after `100-continue`) the clock
      is the app's, not the client's;
    - a client that reads nothing of its answer for as long (the app's writes wait
      on it) is dropped too.

    Its hooks are httptools' parser callbacks, which uvicorn's protocol implements;
    each calls uvicorn's own first.
    """

    _warned_full_at: float | None = None  # shared: one warning a minute, not one a client

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Literal["idle", "head", "body"] = "idle"
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._window_bytes = 0
        self._refused = False
        self._answer_read = False  # since the deadline was set: did the client read?

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= connection_cap():
            self._refused = True
            self.transport = transport
            self._warn_full()
            transport.write(_answer(503, "too many connections; try again shortly", retry_after=1))
            transport.close()
            return
        super().connection_made(transport)
        self._arm(HEAD_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase == "head":
            # Not counted in the read that began the head: that errs by one read only.
            self._head_bytes += len(data)
        elif self._phase == "idle" and self._deadline is None:
            self._arm(HEAD_TIMEOUT)  # the next request begins (or bytes that are none)
        super().data_received(data)
        if (
            self._phase == "head"
            and self._head_bytes > MAX_HEAD
            and not self.transport.is_closing()
        ):
            self._give_up(431, f"the request line and headers are over {MAX_HEAD} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "head"
        self._head_bytes = 0
        if self._deadline is None:
            self._arm(HEAD_TIMEOUT)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = "body"
        self._window_bytes = 0
        self._arm(BODY_WINDOW)

    def on_body(self, body: bytes) -> None:
        self._window_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = "idle"
        # The next request must begin in time, also when the answer went out before
        # this body ended (the body's bytes stopped uvicorn's keep-alive timer).
        self._arm(HEAD_TIMEOUT)

    def resume_writing(self) -> None:
        self._answer_read = True
        super().resume_writing()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._answer_read = False
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            # Closed, but kept until what is still to be sent is sent: a client that
            # has not read it by now loses it.
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            return
        cycle = self.cycle
        in_body = self._phase == "body"
        # Waits that are the app's, not the client's: an answer under way, a full
        # buffer the app has not read, a body it has not asked for after 100-continue.
        app_answers = self._phase == "idle" and cycle is not None and not cycle.response_complete
        app_waits = in_body and cycle is not None and cycle.waiting_for_100_continue
        if self.flow.write_paused and not self._answer_read:
            # Nothing to say it with, and close() would wait for the client to read.
            self._give_up(None, "the client read nothing of its answer", abort=True)
        elif app_answers or app_waits or self.flow.read_paused:
            self._window_bytes = 0
            self._arm(BODY_WINDOW if in_body else HEAD_TIMEOUT)
        elif in_body and self._window_bytes >= BODY_MIN_BYTES:
            self._window_bytes = 0
            self._arm(BODY_WINDOW)
        elif in_body:
            self._give_up(
                408, f"the body came slower than {BODY_MIN_BYTES} bytes in {BODY_WINDOW:g} s"
            )
        elif self._phase == "head":
            self._give_up(408, f"the request head did not arrive within {HEAD_TIMEOUT:g} s")
        else:
            self._give_up(None, "idle")  # no request begun: nothing to answer

    def _give_up(self, status: int | None, message: str, *, abort: bool = False) -> None:
        """Answer `status` if no answer is under way on the connection, and close it
        (drop it, with what is still to be sent, if `abort`)."""
        cycle = self.cycle
        if self._phase == "body" and cycle is not None:
            if status is not None and not cycle.response_started:
                self.transport.write(_answer(status, message))
            # What the app reads or writes from now on goes nowhere, as after a hang-up.
            cycle.disconnected = True
            cycle.message_event.set()
        elif status is not None and (cycle is None or cycle.response_complete):
            self.transport.write(_answer(status, message))
        log.debug("closed a connection from %s: %s", self.client, message)
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
            self._arm(HEAD_TIMEOUT)  # for what it still had to send: see `_expired`

    def _warn_full(self) -> None:
        now = self.loop.time()
        last = _BoundedHttp._warned_full_at
        if last is None or now - last >= 60:
            _BoundedHttp._warned_full_at = now
            log.warning(
                "refusing connections: %d are open, the most this server holds "
                "(half its open files limit, at most %d)",
                len(self.connections),
                MAX_CONNECTIONS,
            )


def _answer(status: int, message: str, *, retry_after: int | None = None) -> bytes:
    """A whole response that closes its connection, written by the protocol itself."""
    body = message.encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        lines.append(f"retry-after: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def uvicorn_server(app: ASGIApp) -> _Server:
    """uvicorn serving `app` with the bounds above, stopped by SIGINT or SIGTERM."""
    return _Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            http=_BoundedHttp,
            ws="none",  # no route speaks WebSocket: an upgrade is not worth a parser
            # Past it, uvicorn answers 503 (and `_BoundedHttp` refuses connections).
            limit_concurrency=MAX_CONNECTIONS,
        )
    )
