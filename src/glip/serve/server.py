"""Running the application with uvicorn: in the foreground (``glip serve``) or on a background
thread (tests, benchmarks, a notebook).

The listening socket is bound before the model loads, so a busy port fails at once, and a port of
0 takes any free one (its number is then in :attr:`BackgroundServer.url`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6 address or name; port 0: any free one).

    Raises:
        OSError: the address is in use or cannot be bound (the message names it).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise OSError(f"--host {host}: cannot resolve it ({error.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app: FastAPI, log_level: str) -> uvicorn.Server:
    # One process, one event loop: the model lives in this process and batches across requests.
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "info",
                                         timeout_graceful_shutdown=10))


def run_server(app: FastAPI, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C (or SIGTERM), then finish the requests under way."""
    _server(app, log_level).run(sockets=[sock])


class BackgroundServer:
    """``app`` served on a background thread while the ``with`` block runs.

    >>> with BackgroundServer(create_app(model)) as server:   # doctest: +SKIP
    ...     urllib.request.urlopen(server.url + "/health")

    Args:
        app: the application.
        host, port: where to listen (default: loopback, any free port).
        startup_timeout: seconds to wait for the server to accept requests.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BackgroundServer:
        sock = bind_socket(self.host, self.port)
        self.url = url_of(sock)
        self._server = _server(self.app, "warning")
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="glip-serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the server on {self.url} did not start within {self.startup_timeout} s")
            time.sleep(0.01)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
