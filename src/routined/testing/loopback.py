"""A stand-in served on loopback: started on a port of its own, stopped with it, usable
as a context manager. Each fake gives the handler class that answers for it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class Loopback:
    """Serves `handler()` (given the fake as its `owner`) at `host`:`port`, port 0 for a
    free one; `port` is the real one once started."""

    host: str
    port: int
    _server: ThreadingHTTPServer | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        handler: Any = type("Handler", (self.handler(),), {"owner": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll: stop() waits for the loop to notice, 0.5 s by default.
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
