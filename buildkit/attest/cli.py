"""`buildkit verifier serve|devices|show HOST|events|approve HOST` (a typer sub-app of buildkit.cli).

The operator commands read and write the verifier's store directly (the same URL `serve` uses),
so they work whether the service runs or not."""

from __future__ import annotations

import getpass
import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from buildkit.errors import UserError

STORE_ENV = "BUILDKIT_VERIFIER_STORE"
DEFAULT_STORE = Path(".buildkit") / "verifier.sqlite"

verifier_app = typer.Typer(
    help="The attestation verifier: its service, and the operator's view of the fleet.", no_args_is_help=True
)


class Format(StrEnum):
    text = "text"
    json = "json"


StoreOption = Annotated[
    str | None,
    typer.Option("--store", help=f"Store URL (default: ${STORE_ENV}, else sqlite:///.buildkit/verifier.sqlite)."),
]
FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]


def store_url(given: str | None) -> str:
    if given:
        return given
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    from buildkit.context import project_root

    path = project_root(Path.cwd()) / DEFAULT_STORE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _open_store(url: str | None) -> Any:
    from buildkit.attest.store import Store

    return Store(store_url(url))


@verifier_app.command("serve")
def serve_command(
    key: Annotated[Path, typer.Option("--key", help="The verifier's secret key (minisign); it signs every verdict.")],
    release: Annotated[
        list[Path],
        typer.Option("--release", help="An OUT_DIR of `buildkit package`: its manifest pins the card (repeatable)."),
    ],
    store: StoreOption = None,
    registry: Annotated[
        str | None, typer.Option("--registry", help="Registry URL (default: $BUILDKIT_REGISTRY, else the project's).")
    ] = None,
    listen: Annotated[str, typer.Option("--listen", help="ADDRESS:PORT to listen on.")] = "127.0.0.1:8443",
    cert: Annotated[Path | None, typer.Option("--cert", help="TLS certificate (PEM): serve HTTPS.")] = None,
    cert_key: Annotated[Path | None, typer.Option("--cert-key", help="The certificate's private key (PEM).")] = None,
    nonce_ttl: Annotated[float, typer.Option("--nonce-ttl", help="Seconds a nonce stays valid.")] = 60.0,
    passphrase_file: Annotated[Path | None, typer.Option("--passphrase-file", help="The key's passphrase.")] = None,
) -> None:
    """Serve nonces, take signed reports, decide allow or quarantine and sign the verdict."""
    from buildkit import sign
    from buildkit.attest.enrol import RegistryEnrolment
    from buildkit.attest.server import Listen, serve
    from buildkit.attest.verifier import Verifier, load_release
    from buildkit.context import project_root
    from buildkit.registry import default_url, open_registry

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--listen {listen!r}: expected ADDRESS:PORT")
    if (cert is None) != (cert_key is None):
        raise UserError("--cert and --cert-key go together")
    secret = sign.load_secret_key(key, lambda: sign.read_passphrase(passphrase_file, f"secret key {key}"))
    releases = {r.manifest_sha256: r for r in (load_release(path) for path in release)}
    enrolment = RegistryEnrolment(open_registry(registry or default_url(project_root(Path.cwd()))))
    verifier = Verifier(
        _open_store(store), enrolment, releases, secret, nonce_ttl, on_decision=enrolment.record_decision
    )
    scheme = "https" if cert else "http"
    typer.echo(
        f"buildkit verifier: {scheme}://{listen}, {len(releases)} release(s), verdicts signed by {secret.key_id}"
    )
    serve(verifier, Listen(host.strip("[]"), int(port), cert, cert_key))


@verifier_app.command("devices")
def devices_command(store: StoreOption = None, fmt: FormatOption = Format.text) -> None:
    """Every device the verifier has heard of: its state, last report and last decision."""
    from buildkit.attest.views import fleet

    rows = fleet(_open_store(store))
    if fmt is Format.json:
        typer.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for row in rows:
        decision = row["last_decision"]
        why = "; ".join(decision["reasons"]) if decision else ""
        pending = " (approved, awaiting a report)" if row["approval_pending"] else ""
        typer.echo(f"{row['hostname']:<24} {row['state']:<11}{pending} {_when(row['last_report'])} {why}".rstrip())


@verifier_app.command("show")
def show_command(host: str, store: StoreOption = None, fmt: FormatOption = Format.text) -> None:
    """One device: state, measurements of its last report, latest events."""
    from buildkit.attest.views import device_detail

    opened = _open_store(store)
    if host not in opened.hostnames():
        raise UserError(f"{host}: the verifier has no record of this device")
    detail = device_detail(opened, host)
    if fmt is Format.json:
        typer.echo(json.dumps(detail, indent=2, sort_keys=True))
        return
    typer.echo(f"{host}: {detail['state']}{' (approved, awaiting a report)' if detail['approval_pending'] else ''}")
    typer.echo(f"last report: {_when(detail['last_report'])}")
    for path, digest in sorted(detail["measurements"].items()):
        typer.echo(f"  {digest}  {path}")
    for event in detail["events"]:
        typer.echo(f"{_stamp(event['at'])} {event['kind']}: {'; '.join(event['reasons'])}")


@verifier_app.command("events")
def events_command(
    store: StoreOption = None,
    fmt: FormatOption = Format.text,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 50,
) -> None:
    """The latest decisions and rejected reports of the whole fleet."""
    from buildkit.attest.views import event_row

    rows = [event_row(e) for e in _open_store(store).events(limit=limit)]
    if fmt is Format.json:
        typer.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for row in rows:
        typer.echo(f"{_stamp(row['at'])} {row['hostname']:<24} {row['kind']:<10} {'; '.join(row['reasons'])}")


@verifier_app.command("approve")
def approve_command(
    host: str,
    store: StoreOption = None,
    fmt: FormatOption = Format.text,
    actor: Annotated[str | None, typer.Option("--actor", help="Who approves (default: the login name).")] = None,
) -> None:
    """Accept what HOST last reported as its expected measurements: its next report is allowed."""
    from buildkit.attest.verifier import approve

    summary = approve(_open_store(store), host, actor or getpass.getuser())
    typer.echo(json.dumps({"hostname": host, "approved": summary}) if fmt is Format.json else f"{host}: {summary}")


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _when(report: dict[str, Any] | None) -> str:
    if report is None:
        return "no report"
    verdict = "accepted" if report["accepted"] else f"rejected ({report['rejection']})"
    return f"report {report['id']} at {_stamp(report['at'])} {verdict}"
