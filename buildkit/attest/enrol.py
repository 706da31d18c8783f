"""Enrolment from the provisioning registry (buildkit.registry): who a device is, the key it signs
with, the release and card files it was provisioned with; and the registry's state kept in step
with the verifier's decisions (quarantined on `quarantine`, active again on `allow`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from buildkit import sign
from buildkit.attest.verifier import Enrolled
from buildkit.errors import UserError
from buildkit.registry import Registry

QUARANTINED, ACTIVE, REVOKED = "quarantined", "active", "revoked"


# A record is read from the registry again after this long: a revocation or a new provisioning
# takes effect within it, and a fleet's nonce and report of one round cost one registry read.
CACHE_SECONDS = 5.0


class RegistryEnrolment:
    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self._cache: dict[str, tuple[float, Enrolled | None]] = {}

    def __call__(self, hostname: str) -> Enrolled | None:
        now = self.clock()
        cached = self._cache.get(hostname)
        if cached is None or cached[0] < now:
            cached = (now + CACHE_SECONDS, self._read(hostname))
            self._cache[hostname] = cached
        return cached[1]

    def _read(self, hostname: str) -> Enrolled | None:
        record = self.registry.find_device(hostname)
        if record is None or record.provisioning is None:
            return None
        try:
            public_key = sign.load_public_key(record.public_key)
        except UserError:
            return None
        return Enrolled(
            hostname=record.hostname,
            state=record.state,
            public_key=public_key,
            manifest_sha256=record.manifest_sha256,
            card_files=dict(record.card_files),
        )

    def record_decision(self, hostname: str, decision: str, reasons: tuple[str, ...]) -> None:
        """The registry's state follows the verdict; a revoked device stays revoked."""
        record = self.registry.find_device(hostname)
        self._cache.pop(hostname, None)
        if record is None or record.state == REVOKED:
            return
        wanted = QUARANTINED if decision == "quarantine" else ACTIVE
        if record.state == wanted:
            return
        why = "attestation: " + ("; ".join(reasons) if reasons else "allowed")
        try:
            self.registry.set_state(hostname, wanted, why[:500], actor="verifier")
        except UserError as exc:  # the verdict stands and is stored; the registry is told next time
            print(f"buildkit verifier: registry state of {hostname} not changed: {exc}", file=sys.stderr)
