"""What a reference service (hello-go, hello-py) promises over HTTP, checked against a running one.

The service listens with `-listen ADDR -token-file PATH` and offers:
- GET /api/health → 200 JSON with "status": "ok"; GET /api/data → 200 JSON object; unknown path → 404;
- GET /debug/logs with `Authorization: Bearer <token>` → 200, the log window as JSON lines, oldest
  first, one object per request with an integer "seq" that grows by one per record, and the headers
  X-Log-Window-Records (records kept) and X-Log-Window-Record-Bytes (largest stored line);
  no token, a wrong token or another scheme → 401; no usable token file → 401 or 503 whatever is sent;
- sensitive values (Authorization, Cookie, *key*/*token* headers; token/password/secret/key query
  parameters) are replaced by "[REDACTED]" before a record is stored: the raw value is never kept,
  and neither is the debug token itself, in any letter case, percent-encoded (once or twice) in the
  path, a header or a query, or sent as a header name;
- 300 slow clients (a request's start, then a header line every half second) hold nothing:
  /api/health answers within 2 s while they trickle, and each is cut off by the service's deadline
  for the whole request (not a timeout per read, which they never trigger);
- the window keeps at most X-Log-Window-Records lines of at most X-Log-Window-Record-Bytes each,
  however many or however large the requests.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from buildkit.smoke.slowclients import hold_slow_clients

REDACTED = "[REDACTED]"
FLOOD_REQUESTS = 2000
FLOOD_CONNECTIONS = 4
MAX_WINDOW_BYTES = 16 << 20  # a Pi 1B has 256-512 MB for everything
TIMEOUT_S = 30
SLOW_CLIENTS = 300
HEALTH_WITHIN_S = 2.0
REQUEST_DEADLINE_S = 10  # the longest of the services' whole-request deadlines


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP/1.1 connection (a flood through urllib would measure connection setup)."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        try:
            return self._get(path, headers or {})
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()  # the server may close an idle keep-alive connection: retry once
            return self._get(path, headers or {})

    def _get(self, path: str, headers: dict[str, str]) -> Response:
        self.conn.request("GET", path, headers=headers)
        resp = self.conn.getresponse()
        body = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)

    def close(self) -> None:
        self.conn.close()


def check_service_contract(base_url: str, token: str) -> None:
    client = Client(base_url)
    try:
        check_api(client)
        check_debug_logs_auth(client, token)
        check_redaction(client, token)
        check_redaction_after_decoding(client, token)
        check_large_request_bounded(client, token)
        check_flood_bounded(base_url, client, token)
    finally:
        client.close()


def check_debug_logs_disabled(base_url: str) -> None:
    """Started without a usable token file: nothing opens /debug/logs."""
    client = Client(base_url)
    try:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
            status = client.get("/debug/logs", headers).status
            assert status in (401, 503), f"/debug/logs with {headers} answered {status} while disabled"
    finally:
        client.close()


def check_api(client: Client) -> None:
    health = client.get("/api/health")
    assert health.status == 200, f"/api/health answered {health.status}"
    assert health.json().get("status") == "ok", f"/api/health body {health.body!r}"
    data = client.get("/api/data")
    assert data.status == 200, f"/api/data answered {data.status}"
    assert isinstance(data.json(), dict), f"/api/data body {data.body!r}"
    assert client.get("/no/such/endpoint").status == 404


def check_debug_logs_auth(client: Client, token: str) -> None:
    refused = {
        "no Authorization": {},
        "wrong token": {"Authorization": "Bearer " + token[::-1] + "x"},
        "token prefix": {"Authorization": "Bearer " + token[:-1]},
        "another scheme": {"Authorization": "Basic " + token},
    }
    for what, headers in refused.items():
        status = client.get("/debug/logs", headers).status
        assert status == 401, f"/debug/logs with {what} answered {status}, expected 401"
    logs = client.get("/debug/logs", bearer(token))
    assert logs.status == 200, f"/debug/logs with the right token answered {logs.status}"
    assert records(logs), "the log window is empty after several requests"


def check_redaction(client: Client, token: str) -> None:
    nonce = secrets.token_hex(6)
    hidden = {
        kind: f"{kind}-{nonce}-hidden"
        for kind in ("authorization", "cookie", "apikey", "token", "password", "secret", "clientkey")
    }
    visible = f"visible-{nonce}"
    query = (
        f"?probe={visible}&token={hidden['token']}&password={hidden['password']}"
        f"&client_secret={hidden['secret']}&api_key={hidden['clientkey']}"
    )
    response = client.get(
        "/api/data" + query,
        {
            "Authorization": "Bearer " + hidden["authorization"],
            "Cookie": "session=" + hidden["cookie"],
            "X-Api-Key": hidden["apikey"],
        },
    )
    assert response.status == 200
    client.get("/debug/logs", bearer(token))  # the token itself is now in a request to be logged
    logs = client.get("/debug/logs", bearer(token))
    text = logs.body.decode()
    leaked = [kind for kind, value in hidden.items() if value in text]
    assert not leaked, f"raw secret values stored in the log window: {leaked}"
    assert token not in text, "the debug token itself is stored in the log window"
    probe_lines = [line for line in text.splitlines() if visible in line]
    assert probe_lines, f"no record of the request carrying {visible} (redaction must not drop the record)"
    assert REDACTED in probe_lines[-1], f"the record does not mark what it redacted: {probe_lines[-1]}"


def percent_encoded(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def check_redaction_after_decoding(client: Client, token: str) -> None:
    """The token hidden from a plain comparison: encoded in the path, encoded twice in a query
    value and a header, sent as a header name (which servers case-fold), in other letter cases; a
    secret under a percent-encoded sensitive name."""
    hidden = f"hidden-{secrets.token_hex(6)}"
    encoded = percent_encoded(token)
    client.get(f"/api/data/{encoded}")
    client.get(f"/api/data?probe={percent_encoded(encoded)}&%74oken={hidden}", {"X-Note": percent_encoded(encoded)})
    client.get("/api/data", {token: "1", "X-Upper": token.upper()})
    client.get("/debug/logs", bearer(token))
    text = client.get("/debug/logs", bearer(token)).body.decode()
    for form in (token, encoded, percent_encoded(encoded), hidden):
        assert form.lower() not in text.lower(), f"the log window holds {form!r} (in some letter case)"


def check_slow_clients_hold_nothing(base_url: str) -> None:
    parts = urlsplit(base_url)
    outcome = hold_slow_clients(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        "/api/health",
        SLOW_CLIENTS,
        probe_after=1.0,
        hold=REQUEST_DEADLINE_S + 3,
        answer_within=HEALTH_WITHIN_S,
    )
    assert outcome.opened == SLOW_CLIENTS, outcome
    assert outcome.status == 200 and outcome.answered_in < HEALTH_WITHIN_S, outcome
    assert outcome.closed_by_server == SLOW_CLIENTS, f"slow clients still connected past the deadline: {outcome}"


def check_large_request_bounded(client: Client, token: str) -> None:
    response = client.get(f"/api/data?pad={'x' * 6000}&probe=large", {"User-Agent": "u" * 4000})
    assert response.status == 200, f"a 10 kB request answered {response.status}"
    logs = client.get("/debug/logs", bearer(token))
    check_window_bounds(logs)


def check_flood_bounded(base_url: str, client: Client, token: str) -> None:
    before = client.get("/debug/logs", bearer(token))
    capacity, _ = window_bounds(before)
    assert capacity < FLOOD_REQUESTS, f"window of {capacity} records: the flood would not overflow it"
    last_before = records(before)[-1]["seq"]
    flood(base_url)
    lines = check_window_bounds(client.get("/debug/logs", bearer(token)))
    assert len(lines) == capacity, f"after {FLOOD_REQUESTS} requests the window holds {len(lines)}, not {capacity}"
    seqs = [line["seq"] for line in lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "records are not consecutive, oldest first"
    assert seqs[0] > last_before, "the window kept records from before the flood instead of the newest"


def flood(base_url: str) -> None:
    failures: list[str] = []

    def worker(first: int) -> None:
        c = Client(base_url)
        try:
            for i in range(first, FLOOD_REQUESTS, FLOOD_CONNECTIONS):
                status = c.get(f"/api/health?flood={i}").status
                if status != 200:
                    failures.append(f"request {i}: {status}")
        except OSError as exc:
            failures.append(f"connection {first}: {exc}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(FLOOD_CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, f"the service failed under a flood: {failures[:5]}"


def window_bounds(logs: Response) -> tuple[int, int]:
    assert logs.status == 200, f"/debug/logs answered {logs.status}"
    try:
        capacity = int(logs.headers["x-log-window-records"])
        record_bytes = int(logs.headers["x-log-window-record-bytes"])
    except (KeyError, ValueError):
        raise AssertionError(f"/debug/logs does not state its bounds: {logs.headers}") from None
    assert 0 < capacity * record_bytes <= MAX_WINDOW_BYTES, f"window bound {capacity} x {record_bytes} bytes"
    return capacity, record_bytes


def check_window_bounds(logs: Response) -> list[dict]:
    capacity, record_bytes = window_bounds(logs)
    lines = logs.body.splitlines()
    assert len(lines) <= capacity, f"{len(lines)} records in a window of {capacity}"
    too_long = [len(line) for line in lines if len(line) > record_bytes]
    assert not too_long, f"records longer than {record_bytes} bytes: {too_long[:5]}"
    return records(logs)


def records(logs: Response) -> list[dict]:
    parsed = [json.loads(line) for line in logs.body.splitlines() if line.strip()]
    assert all(isinstance(r, dict) and isinstance(r.get("seq"), int) for r in parsed), (
        "every record must be a JSON object with an integer seq"
    )
    return parsed


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
