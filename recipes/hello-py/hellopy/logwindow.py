"""The /debug/logs window: a fixed number of records of at most a fixed size, redacted before they
are stored, so memory stays bounded whatever the request rate or size."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qs, unquote

REDACTED = "[REDACTED]"
MAX_FIELD_BYTES = 256  # of one string field in a record
MAX_PAIRS = 16  # headers, query parameters, values per parameter
MIN_RECORD_BYTES = 256
MAX_DECODE_ROUNDS = 4  # a value percent-encoded twice (or more) is still the value

# Names containing one of these (case-insensitive) have their values redacted: Authorization,
# Cookie, X-Api-Key, ?token=, ?password=, ?client_secret=, ?sig=...
SENSITIVE_WORDS = ("auth", "token", "secret", "pass", "pwd", "key", "cookie", "session", "sig", "credential",
                   "jwt", "otp")


class LogWindow:
    """The last `records` records, each one JSON line of at most `max_bytes` bytes, oldest first."""

    def __init__(self, records: int, max_bytes: int) -> None:
        self.slots: list[bytes] = [b""] * records
        self.max_bytes = max_bytes
        self.next_seq = 0
        self._lock = threading.Lock()

    def add(self, make_record) -> None:
        """`make_record(seq)` runs under the lock, so sequence order and window order agree."""
        with self._lock:
            self.slots[self.next_seq % len(self.slots)] = encode_record(make_record(self.next_seq), self.max_bytes)
            self.next_seq += 1

    def snapshot(self) -> bytes:
        with self._lock:
            first = max(0, self.next_seq - len(self.slots))
            return b"".join(self.slots[seq % len(self.slots)] + b"\n" for seq in range(first, self.next_seq))


@dataclass
class Record:
    seq: int
    time: str
    status: int
    bytes: int
    duration_us: int
    remote: str = ""
    method: str = ""
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)
    query_invalid: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    truncated: bool = False

    def to_json(self) -> bytes:
        """Like hello-go's encoding: empty optional fields are left out."""
        data = {k: v for k, v in asdict(self).items()
                if v or k in ("seq", "time", "status", "bytes", "duration_us")}
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class Clipper:
    """Redacts and clips what a record copies from a request; notes when something was cut."""

    def __init__(self, token: str) -> None:
        self.token = re.compile(re.escape(token), re.IGNORECASE) if token else None
        self.truncated = False

    def scrub(self, text: str) -> str:
        """`text` without the debug token, in any letter case (header names are case-folded), also
        where it hides percent-encoded: then the decoded text is kept, with the token redacted."""
        if self.token is None:
            return text
        text = self.token.sub(REDACTED, text)
        decoded = percent_decoded(text)
        return self.token.sub(REDACTED, decoded) if self.token.search(decoded) else text

    def clip(self, text: str) -> str:
        text = self.scrub(text)
        raw = text.encode()
        if len(raw) > MAX_FIELD_BYTES:
            self.truncated = True
            text = raw[:MAX_FIELD_BYTES].decode(errors="ignore")
        return text

    def value(self, name: str, value: str) -> str:
        return REDACTED if is_sensitive(name) else self.clip(value)

    def first_names(self, names) -> list[str]:
        names = sorted(names)
        if len(names) > MAX_PAIRS:
            names, self.truncated = names[:MAX_PAIRS], True
        return names

    def query(self, raw_query: str) -> tuple[dict[str, list[str]], bool]:
        """The parameters, and whether the query is one Go's url.ParseQuery refuses (a ';')."""
        values = parse_qs(raw_query, keep_blank_values=True)
        out = {}
        for name in self.first_names(values):
            kept = values[name]
            if len(kept) > MAX_PAIRS:
                kept, self.truncated = kept[:MAX_PAIRS], True
            out[self.clip(name)] = [self.value(name, v) for v in kept]
        return out, ";" in raw_query

    def headers(self, items: list[tuple[str, str]]) -> dict[str, str]:
        merged: dict[str, list[str]] = {}
        for name, value in items:
            merged.setdefault(canonical_header(name), []).append(value)
        return {self.clip(name): self.value(name, ", ".join(merged[name])) for name in self.first_names(merged)}


def canonical_header(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def is_sensitive(name: str) -> bool:
    lower = percent_decoded(name).lower()
    return any(word in lower for word in SENSITIVE_WORDS)


def percent_decoded(text: str) -> str:
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def encode_record(rec: Record, max_bytes: int) -> bytes:
    """One JSON line of at most `max_bytes`, shedding headers, then the query, then long addresses;
    the last resort always fits in MIN_RECORD_BYTES."""
    def drop_headers(r: Record) -> None:
        r.headers = {}

    def drop_query(r: Record) -> None:
        r.query = {}

    def shorten(r: Record) -> None:
        r.remote, r.path = cut_utf8(r.remote, 64), cut_utf8(r.path, 64)

    def bare(r: Record) -> None:
        r.remote, r.method, r.path, r.query_invalid = "", "", "", False

    line = rec.to_json()
    for shed in (drop_headers, drop_query, shorten, bare):
        if len(line) <= max_bytes:
            break
        shed(rec)
        rec.truncated = True
        line = rec.to_json()
    return line


def cut_utf8(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")
