"""Serve the emulator over HTTP in a background thread (werkzeug's threaded server)."""
from __future__ import annotations

import logging
import threading
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from chatapp.runpod_emulator.app import create_app
from chatapp.runpod_emulator.config import EmulatorConfig
from chatapp.runpod_emulator.emulator import Emulator

log = logging.getLogger(__name__)
access_log = logging.getLogger("chatapp.runpod_emulator.access")


class _Server(ThreadedWSGIServer):
    # Bursts of hundreds of pollers must queue in the kernel, not be refused.
    request_queue_size = 1024


class _Handler(WSGIRequestHandler):
    """Access lines go to our logger (method, path, status): never headers, so never the key.

    They are DEBUG so an embedding app is not flooded by pollers; the CLI turns them on.
    """

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        access_log.debug("%s %s %s", self.command, self.path, getattr(code, "value", code))

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        access_log.debug(format, *args)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        access_log.debug(format, *args)


class EmulatorServer:
    """The RunPod emulator on a real TCP port.

    >>> srv = EmulatorServer(EmulatorConfig(cold_start_s=0.05), port=0, api_key="k")
    >>> srv.start(); srv.base_url  # doctest: +SKIP
    'http://127.0.0.1:43123/v2'
    >>> srv.stop()  # doctest: +SKIP

    `api_key` None accepts any key (the CLI reads ``RUNPOD_API_KEY`` itself).
    """

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0, api_key: str | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.emulator = Emulator(self.config)
        self.app = create_app(self.emulator, api_key)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v2``; an endpoint's URLs are ``base_url + "/<id>/run"`` etc."""
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v2"

    def start(self) -> "EmulatorServer":
        """Bind, then serve in a daemon thread; returns once the socket is listening."""
        if self._server is not None:
            return self
        try:
            self._server = _Server(self.host, self.port, self.app, handler=_Handler)
        except SystemExit as exc:  # werkzeug exits on bind errors; callers want an exception
            raise OSError(f"cannot listen on {self.host}:{self.port}") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="runpod-emulator-http", daemon=True)
        self._thread.start()
        log.info("RunPod emulator serving %s/<endpoint_id>/ (run, runsync, status, stream, "
                 "cancel, retry, purge-queue, health, openai/v1/chat/completions, billing)",
                 self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and stop the simulation."""
        self.emulator.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
