"""The verifier's decisions, apart from HTTP: nonces, the checks of a report, allow or quarantine.

A report is checked in this order, cheapest trust first, so that nothing unauthenticated can use
up a device's nonces or move its counter:

1. its form (canonical JSON of this version), and the device it names is enrolled;
2. its signature, against the public key the registry holds for that device (never a key the
   report brings);
3. its nonce: issued to that device, unused (it is used now, in the same statement) and not
   expired;
4. its boot counter: never lower than the last accepted report's, and higher for a new boot id;
5. its measurements against the expected set: the files the device's release manifest pins (the
   manifest itself, the apkovl, the payload image) and its card files in the registry (what
   `buildkit package --device` and `buildkit image --device` wrote: the boot files too), overridden
   by an operator's approval; a file none of them vouches for is compared with the device's first
   accepted report (trust on first use), and each decision names it (`tofu: PATH`), which alone
   does not quarantine.

Steps 1-4 failing reject the report (HTTP 4xx, no verdict: the device then follows its policy for
an unreachable verifier); step 5 gives `allow` or `quarantine` with the reasons, signed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from buildkit import sign
from buildkit.attest.report import (
    MISSING,
    VERDICT_COMMENT,
    Envelope,
    MalformedReport,
    Report,
    Verdict,
    parse_report,
    sign_message,
    split_envelope,
    verify_envelope,
)
from buildkit.attest.store import Baseline, Store
from buildkit.errors import UserError, VerificationFailed
from buildkit.layout import MANIFEST

DEFAULT_NONCE_TTL = 60.0
NONCE_BYTES = 16  # 128 bits
REVOKED = "revoked"
TOFU = "tofu: "  # the reason that names a file only the first report vouches for; it does not quarantine


@dataclass(frozen=True)
class Enrolled:
    """What the verifier knows of a device, from the provisioning registry."""

    hostname: str
    state: str
    public_key: sign.PublicKey
    manifest_sha256: str
    card_files: dict[str, str] = field(default_factory=dict)


Enrolment = Callable[[str], "Enrolled | None"]


@dataclass(frozen=True)
class Release:
    """The files a signed release manifest pins on the card (card path -> sha256)."""

    manifest_sha256: str
    pins: dict[str, str]


def load_release(out_dir: Path) -> Release:
    """The manifest written by `buildkit package` into `out_dir`."""
    path = out_dir / MANIFEST
    try:
        data = path.read_bytes()
        manifest = json.loads(data)
        pins = {
            MANIFEST: hashlib.sha256(data).hexdigest(),
            manifest["apkovl"]["file"]: manifest["apkovl"]["sha256"],
            manifest["image"]["file"]: manifest["image"]["sha256"],
        }
    except OSError as exc:
        raise UserError(f"{path}: cannot read the release manifest: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a buildkit manifest (apkovl and image entries)") from None
    return Release(pins[MANIFEST], pins)


@dataclass(frozen=True)
class Outcome:
    """What the HTTP layer sends back: a status, and the signed verdict or the reason for refusing."""

    status: int
    body: bytes
    verdict: Verdict | None = None


class Verifier:
    def __init__(
        self,
        store: Store,
        enrolment: Enrolment,
        releases: dict[str, Release],
        key: sign.SecretKey,
        nonce_ttl: float = DEFAULT_NONCE_TTL,
        clock: Callable[[], float] = time.time,
        on_decision: Callable[[str, str, tuple[str, ...]], None] | None = None,
    ) -> None:
        self.store = store
        self.enrolment = enrolment
        self.releases = releases
        self.key = key
        self.nonce_ttl = nonce_ttl
        self.clock = clock
        self.on_decision = on_decision

    def issue_nonce(self, hostname: str) -> str | None:
        """A fresh single-use nonce for an enrolled device; None for any other name."""
        if self.enrolment(hostname) is None:
            return None
        nonce = secrets.token_hex(NONCE_BYTES)
        self.store.add_nonce(nonce, hostname, self.nonce_ttl, self.clock())
        return nonce

    def submit(self, body: bytes) -> Outcome:
        now = self.clock()
        try:
            envelope = split_envelope(body)
            report = parse_report(envelope.message)
        except MalformedReport as exc:
            return Outcome(400, f"not a report: {exc}\n".encode())
        enrolled = self.enrolment(report.hostname)
        if enrolled is None:
            return self._reject(now, report, envelope, 403, f"{report.hostname} is not enrolled")
        try:
            verify_envelope(envelope, enrolled.public_key)
        except (VerificationFailed, UserError) as exc:
            return self._reject(now, report, envelope, 403, f"signature: {exc}")
        why, decision, reasons = self.store.write(lambda conn: self._decide(conn, now, report, envelope, enrolled))
        if why:
            return Outcome(409 if why.startswith("boot counter") else 403, f"rejected: {why}\n".encode())
        if self.on_decision is not None:
            self.on_decision(report.hostname, decision, reasons)
        verdict = Verdict(report.hostname, report.nonce, decision, reasons, _sha256(envelope.message))
        answer = sign_message(verdict.to_bytes(), self.key, f"{VERDICT_COMMENT}:{report.hostname}")
        return Outcome(200, answer.to_bytes(), verdict)

    def _decide(
        self, conn: Connection, now: float, report: Report, envelope: Envelope, enrolled: Enrolled
    ) -> tuple[str, str, tuple[str, ...]]:
        """(why the report is rejected, "", ()) or ("", the decision, its reasons): stored in `conn`."""
        why = self.store.consume_nonce(conn, report.nonce, report.hostname, now)
        if not why:
            why = _counter_problem(report, self.store.last_accepted(conn, report.hostname))
        if why:
            self._record(conn, now, report, envelope, why)
            return why, "", ()
        report_id = self._record(conn, now, report, envelope, "")
        baseline = self.store.baseline(conn, report.hostname)
        reasons = measurement_problems(report, enrolled, self.releases.get(enrolled.manifest_sha256), baseline)
        if baseline is None:
            self.store.add_baseline(conn, now, report.hostname, "first-report", report.files)
        decision = "quarantine" if quarantines(reasons) else "allow"
        self.store.add_decision(conn, now, report.hostname, report_id, decision, reasons)
        return "", decision, reasons

    def _reject(self, now: float, report: Report, envelope: Envelope, status: int, why: str) -> Outcome:
        self.store.write(lambda conn: self._record(conn, now, report, envelope, why))
        return Outcome(status, f"rejected: {why}\n".encode())

    def _record(self, conn: Connection, now: float, report: Report, envelope: Envelope, rejection: str) -> int:
        return self.store.add_report(
            conn,
            now,
            report.hostname,
            _sha256(envelope.message),
            envelope.message.decode("ascii"),
            envelope.signature,
            rejection,
            report.boot_id,
            report.boot_counter,
        )


def _counter_problem(report: Report, last: Any) -> str:
    if last is None:
        return ""
    if report.boot_counter < last.boot_counter:
        return f"boot counter went back ({report.boot_counter} < {last.boot_counter}): an old card or a copy of it"
    if report.boot_counter == last.boot_counter and report.boot_id != last.boot_id:
        return (
            f"boot counter {report.boot_counter} did not advance for a new boot id: "
            "the card's counter was reset, or two cards share this key"
        )
    return ""


def expected_files(enrolled: Enrolled, release: Release | None, baseline: Baseline | None) -> dict[str, str]:
    """Card path -> sha256 the device must report: an approval replaces the release's and the
    registry's pins; the first report only fills in what they do not pin."""
    pinned = {**enrolled.card_files, **(release.pins if release else {})}
    if baseline is None:
        return pinned
    if baseline.source == "approval":
        return {**pinned, **baseline.files}
    return {**baseline.files, **pinned}


def measurement_problems(
    report: Report, enrolled: Enrolled, release: Release | None, baseline: Baseline | None
) -> tuple[str, ...]:
    """Why the device must be quarantined, and the files trusted on first use (TOFU): () to allow
    it without reservation."""
    reasons = []
    if enrolled.state == REVOKED:
        reasons.append("the registry has revoked this device")
    if release is None:
        reasons.append(
            f"release manifest {enrolled.manifest_sha256[:16]} is not known to this verifier "
            "(buildkit verifier serve --release OUT_DIR)"
        )
    expected = expected_files(enrolled, release, baseline)
    release_pins = set(release.pins) if release else set()
    vouched = {
        *enrolled.card_files,
        *release_pins,
        *(baseline.files if baseline and baseline.source == "approval" else ()),
    }
    for path in sorted(set(expected) | set(report.files)):
        measured, wanted = report.files.get(path), expected.get(path)
        if wanted is None:
            continue  # unpinned before the first report: it becomes the baseline
        if measured is None:
            if path in release_pins:
                reasons.append(f"not reported: {path}")
        elif measured == MISSING:
            reasons.append(f"missing: {path}")
        elif measured != wanted:
            reasons.append(f"mismatch: {path}")
    return (*reasons, *(f"{TOFU}{path}" for path in sorted(set(report.files) - vouched)))


def quarantines(reasons: tuple[str, ...]) -> bool:
    return any(not reason.startswith(TOFU) for reason in reasons)


def approve(store: Store, hostname: str, actor: str, clock: Callable[[], float] = time.time) -> str:
    """The operator accepts what `hostname` last reported as its expected set; its next report is
    then allowed (if it reports the same). A summary line; UserError without an accepted report."""
    now = clock()
    with store.transaction() as conn:
        last = store.last_accepted(conn, hostname)
        if last is None:
            raise UserError(f"{hostname}: no accepted report to approve (the device has not attested yet)")
        files = json.loads(last.body)["files"]
        store.add_baseline(conn, now, hostname, "approval", files)
        reason = f"{actor} approved the {len(files)} measurements of report {last.id}"
        store.add_decision(conn, now, hostname, last.id, "approve", (reason,), actor)
    return reason


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
