"""`buildkit verifier serve`: the verifier over HTTP (Starlette on uvicorn).

    GET  /nonce?host=HOST      a fresh single-use nonce (text), 404 for a device not enrolled
    POST /report               REPORT\\nMINISIGN-SIGNATURE -> 200 VERDICT\\nSIGNATURE, or 4xx and why
    GET  /api/devices          the fleet (JSON)        GET /api/devices/HOST   one device (JSON)
    GET  /api/events           latest decisions and rejections (JSON)
    GET  /                     the operator's page (read-only; refreshes itself from /api/devices)

HTTPS when given a certificate, else plain HTTP (behind a TLS reverse proxy, or on a private link):
both directions are signed, so TLS adds confidentiality, not the proof.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from buildkit.attest import views
from buildkit.attest.report import HOSTNAME_RE, MAX_MESSAGE_BYTES
from buildkit.attest.verifier import Verifier

MAX_BODY = MAX_MESSAGE_BYTES + 4096
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
PAGE_DIR = Path(__file__).with_name("page")


def create_app(verifier: Verifier, refresh_ms: int = 2000) -> Starlette:
    store = verifier.store

    async def nonce(request: Request) -> Response:
        host = request.query_params.get("host", "")
        issued = await run_in_threadpool(verifier.issue_nonce, host) if HOSTNAME_RE.fullmatch(host) else None
        if issued is None:
            return PlainTextResponse("not enrolled\n", status_code=404)
        return PlainTextResponse(issued + "\n", headers={"Cache-Control": "no-store"})

    async def report(request: Request) -> Response:
        body = await _bounded_body(request)
        if body is None:
            return PlainTextResponse(f"larger than {MAX_BODY} bytes\n", status_code=413)
        outcome = await run_in_threadpool(verifier.submit, body)
        return Response(outcome.body, status_code=outcome.status, media_type="text/plain")

    async def devices(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(views.fleet, store), headers=PAGE_HEADERS)

    async def device(request: Request) -> Response:
        host = request.path_params["host"]
        if host not in await run_in_threadpool(store.hostnames):
            return JSONResponse({"error": f"{host}: no records"}, status_code=404)
        return JSONResponse(await run_in_threadpool(views.device_detail, store, host), headers=PAGE_HEADERS)

    async def events(request: Request) -> Response:
        rows = await run_in_threadpool(store.events)
        return JSONResponse([views.event_row(e) for e in rows], headers=PAGE_HEADERS)

    async def page(request: Request) -> Response:
        html = (PAGE_DIR / "index.html").read_text().replace("@REFRESH_MS@", str(refresh_ms))
        return Response(html, media_type="text/html", headers=PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        media = ASSETS.get(name)
        if media is None:
            return PlainTextResponse("not found\n", status_code=404)
        return Response((PAGE_DIR / name).read_bytes(), media_type=media, headers=PAGE_HEADERS)

    return Starlette(
        routes=[
            Route("/nonce", nonce),
            Route("/report", report, methods=["POST"]),
            Route("/api/devices", devices),
            Route("/api/devices/{host}", device),
            Route("/api/events", events),
            Route("/", page),
            Route("/static/{name}", asset),
        ]
    )


ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}


async def _bounded_body(request: Request) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    certfile: Path | None = None
    keyfile: Path | None = None


def serve(verifier: Verifier, listen: Listen, refresh_ms: int = 2000) -> None:
    import uvicorn

    uvicorn.run(
        create_app(verifier, refresh_ms),
        host=listen.host,
        port=listen.port,
        ssl_certfile=str(listen.certfile) if listen.certfile else None,
        ssl_keyfile=str(listen.keyfile) if listen.keyfile else None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        backlog=4096,
        limit_concurrency=4096,
    )
