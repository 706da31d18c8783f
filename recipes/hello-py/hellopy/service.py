"""The HTTP service: routes, the bearer-token check and one redacted record per request.

The connections are held by an event loop (connection.py), which hands each request to the
handler below only once it has arrived whole; the handler reads and writes memory, never a socket."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import platform
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from hellopy import VERSION
from hellopy.connection import MAX_CONNECTIONS, Server
from hellopy.logwindow import Clipper, LogWindow, Record
from hellopy.spawn import DEFAULT_SPAWN, MAX_SPAWN, SpawnError, spawn_orphans


class Service:
    """What the handlers share: the token digest, the log window and counters."""

    def __init__(self, token: str, logs: LogWindow, spawn_served: bool = False) -> None:
        self.started = time.monotonic()
        self.token = token  # kept only to scrub it from records; compared through its digest
        self.token_digest = hashlib.sha256(token.encode()).digest()
        self.logs = logs
        self.served = 0
        self._served_lock = threading.Lock()
        self.spawning = threading.Lock()
        self.spawn_served = spawn_served  # /api/spawn is routed only when the recipe's smoke configuration asks

    def count_request(self) -> None:
        with self._served_lock:
            self.served += 1

    def authorized(self, authorization: str | None) -> bool:
        """Digests are compared so that neither the content nor the length of the token leaks through timing."""
        scheme, _, credential = (authorization or "").partition(" ")
        if not credential or scheme.lower() != "bearer":
            return False
        got = hashlib.sha256(credential.strip().encode()).digest()
        return hmac.compare_digest(got, self.token_digest)


class Handler(BaseHTTPRequestHandler):
    server_version = f"hello-py/{VERSION}"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    service: Service  # set on the subclass made by make_server

    ROUTES = {
        "/api/health": ("GET",),
        "/api/data": ("GET",),
        "/debug/logs": ("GET",),
    }
    SPAWN_ROUTES = {"/api/spawn": ("GET", "POST")}

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_HEAD(self) -> None:
        self.dispatch()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST  # answered 405, like hello-go, not 501

    # The request is `self.request`: its bytes, head and body, already read by the connection.
    def setup(self) -> None:
        self.rfile = io.BytesIO(self.request)
        self.wfile = io.BytesIO()

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        """The connection writes `self.wfile` out."""

    def version_string(self) -> str:
        return self.server_version

    def dispatch(self) -> None:
        start = time.monotonic()
        self.status, self.sent = 200, 0
        url = urlsplit(self.path)
        methods = self.ROUTES.get(url.path)
        if methods is None:
            self.write_json(404, {"error": "not found"})
        elif self.command not in methods and not (self.command == "HEAD" and "GET" in methods):
            self.write_json(405, {"error": f"method not allowed; use {', '.join(methods)}"},
                            extra={"Allow": ", ".join(methods)})
        else:
            handler = getattr(self, "route_" + url.path.strip("/").replace("/", "_"))
            handler(url.query)
        self.record(url.path, url.query, start)

    def route_api_health(self, _query: str) -> None:
        self.write_json(200, {"status": "ok", "version": VERSION,
                              "uptime_s": int(time.monotonic() - self.service.started)})

    def route_api_data(self, _query: str) -> None:
        self.write_json(200, {"message": "hello from an ARMv6 payload", "python": platform.python_version(),
                              "machine": platform.machine(), "served": self.service.served})

    def route_api_spawn(self, query: str) -> None:
        n, ok = spawn_count(query)
        if not ok:
            self.write_json(400, {"error": f"n must be 1 to {MAX_SPAWN}"})
            return
        if not self.service.spawning.acquire(blocking=False):
            self.write_json(429, {"error": "a spawn is already running"})
            return
        try:
            self.write_json(200, spawn_orphans(n))
        except SpawnError as exc:
            self.write_json(500, {"error": str(exc), **exc.done})
        finally:
            self.service.spawning.release()

    def route_debug_logs(self, _query: str) -> None:
        if not self.service.token:
            self.write_json(503, {"error": "debug logs disabled: no token file"})
            return
        if not self.service.authorized(self.headers.get("Authorization")):
            self.write_json(401, {"error": "a valid bearer token is required"},
                            extra={"WWW-Authenticate": 'Bearer realm="debug"'})
            return
        logs = self.service.logs
        self.write_body(200, logs.snapshot(), "application/x-ndjson", {
            "Cache-Control": "no-store",
            "X-Log-Window-Records": str(len(logs.slots)),
            "X-Log-Window-Record-Bytes": str(logs.max_bytes),
        })

    def write_json(self, status: int, body: dict, extra: dict[str, str] | None = None) -> None:
        self.write_body(status, json.dumps(body).encode() + b"\n", "application/json", extra or {})

    def write_body(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.sent = len(body)
        self.status = status

    def record(self, path: str, query: str, start: float) -> None:
        service = self.service
        service.count_request()
        took_us = int((time.monotonic() - start) * 1e6)

        def make(seq: int) -> Record:
            clip = Clipper(service.token)
            rec = Record(seq=seq, time=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                         status=self.status, bytes=self.sent, duration_us=took_us,
                         remote=clip.clip(f"{self.client_address[0]}:{self.client_address[1]}"),
                         method=clip.clip(self.command), path=clip.clip(path))
            rec.query, rec.query_invalid = clip.query(query)
            rec.headers = clip.headers(self.headers.items())
            rec.truncated = clip.truncated
            return rec

        service.logs.add(make)

    def log_message(self, format: str, *args) -> None:
        """Requests go to the redacted window only; stderr would carry tokens in query strings."""


def spawn_count(query: str) -> tuple[int, bool]:
    raw = parse_qs(query).get("n", [""])[0]
    if not raw:
        return DEFAULT_SPAWN, True
    return (int(raw), True) if raw.isdigit() and 1 <= int(raw) <= MAX_SPAWN else (0, False)


def make_server(host: str, port: int, service: Service, max_connections: int = MAX_CONNECTIONS) -> Server:
    routes = {**Handler.ROUTES, **(Handler.SPAWN_ROUTES if service.spawn_served else {})}
    handler = type("BoundHandler", (Handler,), {"service": service, "ROUTES": routes})
    return Server(host, port, handler, max_connections)
