"""What the operator sees of the fleet: the same rows for the CLI (`buildkit verifier devices|show|
events`), the JSON API and the web page."""

from __future__ import annotations

import json
from typing import Any

from buildkit.attest.store import Decision, Store, StoredReport

UNKNOWN = "unknown"  # a device that has no decision yet


def device_summary(store: Store, hostname: str) -> dict[str, Any]:
    report = store.last_report(hostname)
    decision = store.last_decision(hostname)
    approval = store.last_decision(hostname, ("approve",))
    pending = approval is not None and (decision is None or approval.id > decision.id)
    return {
        "hostname": hostname,
        "state": decision.decision if decision else UNKNOWN,
        "approval_pending": pending,
        "last_report": report_row(report) if report else None,
        "last_decision": decision_row(decision) if decision else None,
    }


def fleet(store: Store) -> list[dict[str, Any]]:
    return [device_summary(store, hostname) for hostname in store.hostnames()]


def device_detail(store: Store, hostname: str) -> dict[str, Any]:
    summary = device_summary(store, hostname)
    report = store.last_report(hostname)
    summary["measurements"] = json.loads(report.body)["files"] if report else {}
    summary["events"] = [event_row(e) for e in store.events(hostname, limit=20)]
    return summary


def report_row(report: StoredReport) -> dict[str, Any]:
    return {
        "id": report.id,
        "at": report.received_at,
        "accepted": report.accepted,
        "rejection": report.rejection,
        "boot_id": report.boot_id,
        "boot_counter": report.boot_counter,
        "sha256": report.sha256,
    }


def decision_row(decision: Decision) -> dict[str, Any]:
    return {
        "id": decision.id,
        "at": decision.at,
        "decision": decision.decision,
        "reasons": list(decision.reasons),
        "actor": decision.actor,
        "report_id": decision.report_id,
    }


def event_row(event: Decision | StoredReport) -> dict[str, Any]:
    if isinstance(event, Decision):
        return {"kind": event.decision, "hostname": event.hostname, **decision_row(event)}
    return {"kind": "rejected", "hostname": event.hostname, "reasons": [event.rejection], **report_row(event)}
