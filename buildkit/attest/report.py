"""The attestation messages: a device's report and the verifier's verdict, in canonical form.

Both are one line of JSON with sorted keys, no spaces and ASCII only (what `json.dumps(...,
sort_keys=True, separators=(",", ":"))` writes), followed on the wire by a minisign signature of
exactly those bytes: `REPORT\\nSIGNATURE-FILE`. A report that is not in canonical form is refused,
so one signed report has one meaning (no duplicate keys, no second spelling of a number).

The device builds its report with busybox (rootfs/features/attest/usr/libexec/buildkit/attest) and
signs it with its identity key through the stock `minisign -S`; it checks the verdict with
`minisign -V` against the verifier's public key, which its overlay carries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from buildkit import sign
from buildkit.errors import UserError

VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_FILES = 256
MISSING = "missing"  # the hash the device reports for a file it did not find
HOSTNAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NONCE_RE = re.compile(r"[0-9a-f]{32,128}")
BOOT_ID_RE = re.compile(r"[0-9a-f-]{1,64}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Card-relative paths, as the device's busybox prints them: plain words, never '..'.
CARD_PATH_RE = re.compile(r"(?!.*(^|/)\.\.(/|$))[A-Za-z0-9._+-][A-Za-z0-9._/+-]{0,254}")
DECISIONS = ("allow", "quarantine")
REPORT_COMMENT = "buildkit-attest-report"
VERDICT_COMMENT = "buildkit-attest-verdict"


class MalformedReport(ValueError):
    """The bytes are not a report of this version in canonical form."""


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Report:
    hostname: str
    nonce: str
    boot_id: str
    boot_counter: int
    uptime_s: int
    payload: str
    payload_running: bool
    files: dict[str, str]  # card-relative path -> sha256, or MISSING

    def to_json(self) -> dict[str, Any]:
        return {
            "boot_counter": self.boot_counter,
            "boot_id": self.boot_id,
            "files": dict(sorted(self.files.items())),
            "hostname": self.hostname,
            "nonce": self.nonce,
            "payload": {"name": self.payload, "running": self.payload_running},
            "uptime_s": self.uptime_s,
            "v": VERSION,
        }

    def to_bytes(self) -> bytes:
        return canonical(self.to_json())


def parse_report(data: bytes) -> Report:
    """The report in `data`, which must be its canonical form; MalformedReport says what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedReport(f"larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise MalformedReport("not JSON") from None
    if not isinstance(raw, dict) or set(raw) != {
        "boot_counter",
        "boot_id",
        "files",
        "hostname",
        "nonce",
        "payload",
        "uptime_s",
        "v",
    }:
        raise MalformedReport(
            "expected exactly the fields boot_counter, boot_id, files, hostname, nonce, payload, uptime_s, v"
        )
    if raw["v"] != VERSION:
        raise MalformedReport(f"version {raw['v']!r}, expected {VERSION}")
    payload = raw["payload"]
    if not isinstance(payload, dict) or set(payload) != {"name", "running"}:
        raise MalformedReport("payload: expected {name, running}")
    report = Report(
        hostname=_matching(raw["hostname"], HOSTNAME_RE, "hostname"),
        nonce=_matching(raw["nonce"], NONCE_RE, "nonce"),
        boot_id=_matching(raw["boot_id"], BOOT_ID_RE, "boot_id"),
        boot_counter=_count(raw["boot_counter"], "boot_counter"),
        uptime_s=_count(raw["uptime_s"], "uptime_s"),
        payload=_matching(payload["name"], HOSTNAME_RE, "payload.name"),
        payload_running=_flag(payload["running"], "payload.running"),
        files=_files(raw["files"]),
    )
    if report.to_bytes() != data:
        raise MalformedReport("not in canonical form (sorted keys, no spaces, ASCII, no trailing newline)")
    return report


def _matching(value: Any, pattern: re.Pattern[str], key: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedReport(f"{key}: expected a string matching {pattern.pattern}")
    return value


def _count(value: Any, key: str) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise MalformedReport(f"{key}: expected a non-negative integer")
    return value


def _flag(value: Any, key: str) -> bool:
    if type(value) is not bool:
        raise MalformedReport(f"{key}: expected true or false")
    return value


def _files(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_FILES:
        raise MalformedReport(f"files: expected a table of 1 to {MAX_FILES} card paths")
    for path, digest in value.items():
        _matching(path, CARD_PATH_RE, "files: path")
        if digest != MISSING:
            _matching(digest, SHA256_RE, f"files.{path}")
    return dict(value)


@dataclass(frozen=True)
class Envelope:
    """A signed message on the wire: the canonical bytes and the minisign signature text."""

    message: bytes
    signature: str

    def to_bytes(self) -> bytes:
        return self.message + b"\n" + self.signature.encode()


def split_envelope(body: bytes) -> Envelope:
    message, newline, signature = body.partition(b"\n")
    if not newline or len(body) > MAX_MESSAGE_BYTES + 4096:
        raise MalformedReport("expected the message, a newline, then its minisign signature")
    try:
        return Envelope(message, signature.decode("ascii"))
    except UnicodeDecodeError:
        raise MalformedReport("the signature is not ASCII") from None


def sign_message(message: bytes, key: sign.SecretKey, comment: str) -> Envelope:
    return Envelope(message, sign.sign_bytes(message, key, comment))


def verify_envelope(envelope: Envelope, key: sign.PublicKey) -> str:
    """The trusted comment; VerificationFailed when `key` did not sign the message, UserError when
    the signature text is not a minisign signature."""
    return sign.verify_bytes(envelope.message, envelope.signature, key)


@dataclass(frozen=True)
class Verdict:
    """The verifier's answer to one report: bound to the device and to the nonce the report used."""

    hostname: str
    nonce: str
    decision: str  # one of DECISIONS
    reasons: tuple[str, ...]
    report_sha256: str

    def to_bytes(self) -> bytes:
        return canonical(
            {
                "decision": self.decision,
                "hostname": self.hostname,
                "nonce": self.nonce,
                "reasons": list(self.reasons),
                "report_sha256": self.report_sha256,
                "v": VERSION,
            }
        )


def parse_verdict(data: bytes) -> Verdict:
    try:
        raw = json.loads(data)
        verdict = Verdict(raw["hostname"], raw["nonce"], raw["decision"], tuple(raw["reasons"]), raw["report_sha256"])
    except (ValueError, KeyError, TypeError):
        raise UserError("not an attestation verdict") from None
    if verdict.to_bytes() != data or verdict.decision not in DECISIONS:
        raise UserError("not an attestation verdict in canonical form")
    return verdict
