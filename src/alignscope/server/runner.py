"""Run the server: :func:`serve` (blocking, for ``alignscope serve``) and :class:`BackgroundServer` (a uvicorn
server on a loopback port in a background thread, for notebooks, tests and benchmarks)."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from alignscope.models.base import ModelError
from alignscope.server.guards import GuardAuditLog, build_guard

log = logging.getLogger("alignscope.server")


def build_app(
    model_spec: str = "smollm2",
    guards: Sequence[str] = (),
    *,
    audit_log: str | os.PathLike[str] | None = None,
    served_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    **settings: Any,
) -> Any:
    """Load ``model_spec`` (any spec, ``openai:`` included: a guarded proxy), build the guards from their specs
    (:func:`alignscope.server.guards.build_guard`) and return the app. ``settings`` are
    :class:`~alignscope.server.app.ServerSettings` fields."""
    from alignscope.models.loading import load_chat_model
    from alignscope.server.app import ServerSettings, create_app

    model = load_chat_model(model_spec, device=device, dtype=dtype)
    built = []
    for spec in guards:
        try:
            built.append(build_guard(spec, model))
        except ValueError as e:
            raise ModelError(f"guard {spec!r}: {e}") from e
    return create_app(
        model,
        built,
        settings=ServerSettings(**settings),
        audit_log=GuardAuditLog(audit_log),
        served_name=served_name,
    )


def serve(
    model_spec: str = "smollm2",
    host: str = "127.0.0.1",
    port: int = 8000,
    guards: Sequence[str] = (),
    *,
    audit_log: str | os.PathLike[str] | None = None,
    served_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    log_level: str = "info",
    threads: int | None = None,
    **settings: Any,
) -> None:
    """Serve ``model_spec`` with ``guards`` (spec strings) on ``host:port`` until interrupted.

    ``settings`` are :class:`~alignscope.server.app.ServerSettings` fields (``max_input_chars``,
    ``max_tokens_limit``, ``default_temperature``, ``max_queue``, ``api_key``...). The admin token comes from
    ``$ALIGNSCOPE_ADMIN_TOKEN``. ``threads`` sets torch's intra-op threads (on a shared CPU, 1 is often fastest).
    """
    import uvicorn

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    if not _is_loopback(host):
        log.warning("serving on %s: reachable from other machines; set api_key and a firewall", host)
    app = build_app(
        model_spec,
        guards,
        audit_log=audit_log,
        served_name=served_name,
        device=device,
        dtype=dtype,
        **settings,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BackgroundServer:
    """A uvicorn server for ``app`` in a daemon thread, on ``127.0.0.1`` and a free port (or ``port``).

    Use as a context manager::

        with BackgroundServer(create_app(model)) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="none")

    Args:
        app: an ASGI app, e.g. from :func:`alignscope.server.create_app`.
        port: 0 picks a free port (the socket is bound here, so there is no race for it).
        startup_timeout: seconds to wait for the server to accept connections.
    """

    def __init__(self, app: Any, port: int = 0, startup_timeout: float = 30.0, log_level: str = "warning"):
        import uvicorn

        self.host = "127.0.0.1"
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((self.host, port))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True, name="alignscope-serve"
        )
        self.startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return f"{self.url}/v1"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during startup (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {self.startup_timeout:g}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
