"""Enrolment from the provisioning registry (buildkit.registry): who a device is, the key it signs
with, the release and card files it was provisioned with; and the registry's state kept in step
with the verifier's decisions (quarantined on `quarantine`, active again on `allow`)."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable

from buildkit import sign
from buildkit.attest.verifier import Enrolled
from buildkit.errors import UserError
from buildkit.registry import DeviceRecord, Registry

QUARANTINED, ACTIVE, REVOKED = "quarantined", "active", "revoked"


# The fleet is read from the registry again after this long: a revocation, a new device or a new
# provisioning takes effect within it, and one read serves every nonce and report in between.
CACHE_SECONDS = 5.0


class RegistryEnrolment:
    """The registry's devices as the verifier needs them, read all at once (a few queries, rather
    than a few per device while the whole fleet reports) and kept CACHE_SECONDS."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self._fleet: dict[str, Enrolled] = {}
        self._expires = float("-inf")
        self._reading = threading.Lock()  # one thread reads the fleet; the others wait for its result
        # The registry's state changes one at a time: concurrent verdicts would otherwise poll
        # SQLite's write lock, each waiting out its back-off.
        self._state_writer = threading.Lock()

    def __call__(self, hostname: str) -> Enrolled | None:
        if self._expires < self.clock():
            with self._reading:
                if self._expires < self.clock():
                    self._fleet = {e.hostname: e for e in map(_enrolled, self.registry.devices()) if e is not None}
                    self._expires = self.clock() + CACHE_SECONDS
        return self._fleet.get(hostname)

    def record_decision(self, hostname: str, decision: str, reasons: tuple[str, ...]) -> None:
        """The registry's state follows the verdict; a revoked device stays revoked. The state is
        the one read with the record (at most CACHE_SECONDS old): a verdict that agrees with it
        writes nothing, and one that changes it leaves the new state in the cache."""
        enrolled = self(hostname)
        wanted = QUARANTINED if decision == "quarantine" else ACTIVE
        if enrolled is None or enrolled.state in (REVOKED, wanted):
            return
        why = "attestation: " + ("; ".join(reasons) if reasons else "allowed")
        try:
            with self._state_writer:
                self.registry.change_state(hostname, wanted, why[:500], actor="verifier")
        except UserError as exc:  # the verdict stands and is stored; the registry is told next time
            self._expires = float("-inf")
            print(f"buildkit verifier: registry state of {hostname} not changed: {exc}", file=sys.stderr)
            return
        self._fleet[hostname] = dataclasses.replace(enrolled, state=wanted)


def _enrolled(record: DeviceRecord) -> Enrolled | None:
    """What the verifier needs of a provisioned device with a valid key; None for any other."""
    if record.provisioning is None:
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
