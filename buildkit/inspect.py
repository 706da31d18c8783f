"""`buildkit inspect OUT_DIR`: what a package holds and what it costs, read from what `buildkit
package` wrote, never rebuilt.

Sizes come from the signed manifest (every payload file with its size), attributed four ways:
by directory; by Debian package (the payload's dpkg file lists, when the rootfs kept them); by
wheel (each `.dist-info/RECORD`); by Go module (each Go binary's build info names its modules, and
its function table, which survives `-ldflags=-s`, says how much code each one brought). Then the
gate's verdict with its waivers (gate.json), the manifest's signature checked against the
buildkit.pub beside it and against the key the overlay trusts, and the overlay's services
(OpenRC runlevels) and firewall rules (its nftables.nft). The JSON form follows
buildkit/schemas/inspect.schema.json.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from buildkit.archgate.elfcheck import ElfParseError, open_elf
from buildkit.archgate.gobuildinfo import GoBuildInfo, read_go_buildinfo, read_go_function_table
from buildkit.archgate.model import GateReport
from buildkit.errors import UserError, VerificationFailed
from buildkit.layout import APKOVL_GLOB, MANIFEST, PUBLIC_KEY, SIGNATURE
from buildkit.sign import key_id_text, load_public_key, parse_signature, verify_file
from buildkit.walk import ELF_MAGIC, open_artifact

SCHEMA_VERSION = 1
GATE_REPORT = "gate.json"  # build/stage.py's name for it; inspect sits on the package, not the build stage
PAYLOAD_DIR = "payload"
TRUSTED_KEY = "etc/buildkit/buildkit.pub"  # the key the device checks the manifest with
RUNLEVELS = "etc/runlevels/"
RULESET = "etc/nftables.nft"
DPKG_INFO = "var/lib/dpkg/info"
DIRECTORY_DEPTH = 2
STANDARD_LIBRARY = "std"  # Go's standard library and runtime, and the linker's own symbols
TEXT_ROWS = 12  # rows per table in the text form (the JSON form has them all)

DEFINE_RE = re.compile(r"define (\w+) = (\S+)")
CHAIN_RE = re.compile(r"chain (\w+) \{")
PORT_RULE_RE = re.compile(r"(?:(ip6?) daddr \{ ([^}]*) \} )?(tcp|udp) (?:sport \d+ udp )?dport (\S+)")


def inspect_package(out_dir: Path) -> dict[str, Any]:
    """The report of the package in `out_dir`; UserError when it is not one."""
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{out_dir}: no {MANIFEST}: not an output directory of `buildkit package`")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {rel: entry for rel, entry in manifest["payload"].items() if entry["type"] == "file"}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{manifest_path}: not a buildkit manifest ({type(exc).__name__}: {exc})") from None
    sizes = {rel: int(entry["size"]) for rel, entry in files.items()}
    overlay = read_overlay(out_dir, manifest)
    notes: list[str] = []
    with payload_tree(out_dir, manifest) as root:
        debian = debian_package_sizes(root, sizes, notes)
        wheels = wheel_sizes(root, sizes)
        go_modules = go_module_sizes(root, sizes)
    return {
        "schema": SCHEMA_VERSION,
        "out_dir": str(out_dir),
        "name": manifest["name"],
        "version": manifest["version"],
        "kind": manifest["recipe"]["kind"],
        "payload": {
            "files": len(sizes),
            "bytes": sum(sizes.values()),
            "image_bytes": manifest["image"]["size"],
            "apkovl_bytes": manifest["apkovl"]["size"],
        },
        "sizes": {
            "directories": directory_sizes(sizes),
            "debian_packages": debian,
            "wheels": wheels,
            "go_modules": go_modules,
        },
        "notes": notes,
        "gate": gate_summary(out_dir, manifest),
        "signature": signature_status(out_dir, overlay),
        "services": services(overlay),
        "firewall": firewall_rules(overlay.get(RULESET, "")),
    }


def ranked(totals: dict[str, int], **extra: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of name and bytes, largest first (then by name, so the order is reproducible)."""
    rows = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return [
        {"name": name, "bytes": size, **{key: values[name] for key, values in extra.items()}} for name, size in rows
    ]


def directory_sizes(sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Every directory down to DIRECTORY_DEPTH with the bytes of the files below it."""
    totals: dict[str, int] = defaultdict(int)
    for rel, size in sizes.items():
        parts = rel.split("/")[:-1]
        for depth in range(1, min(len(parts), DIRECTORY_DEPTH) + 1):
            totals["/".join(parts[:depth]) + "/"] += size
    return ranked(totals)


@contextlib.contextmanager
def payload_tree(out_dir: Path, manifest: dict[str, Any]) -> Iterator[Path]:
    """The payload as `buildkit package` left it beside the image, else the image itself unpacked
    (in a temporary directory removed on exit)."""
    if (out_dir / PAYLOAD_DIR).is_dir():
        yield out_dir / PAYLOAD_DIR
        return
    image = out_dir / manifest["image"]["file"]
    if not image.is_file():
        raise UserError(f"{out_dir}: neither {PAYLOAD_DIR}/ nor the payload image {image.name} is there")
    with open_artifact(image) as tree:
        yield tree.root


def debian_package_sizes(root: Path, sizes: dict[str, int], notes: list[str]) -> list[dict[str, Any]]:
    """Bytes per Debian package, from dpkg's file lists (`var/lib/dpkg/info/<pkg>.list`)."""
    info = root / DPKG_INFO
    lists = sorted(info.glob("*.list")) if info.is_dir() else []
    if not lists:
        if any(rel.startswith(("usr/lib/", "lib/")) for rel in sizes):
            notes.append("no dpkg database in the payload (buildkit prunes it): Debian packages are not attributed")
        return []
    totals: dict[str, int] = {}
    for listing in lists:
        owned = (line.strip().lstrip("/") for line in listing.read_text(errors="replace").splitlines())
        totals[listing.stem.split(":")[0]] = sum(sizes.get(rel, 0) for rel in owned)
    return ranked(totals)


def wheel_sizes(root: Path, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Bytes per installed distribution, from the paths its `.dist-info/RECORD` lists."""
    totals, versions = {}, {}
    for record in sorted(root.glob("**/*.dist-info/RECORD")):
        site = record.parent.parent.relative_to(root).as_posix()
        name, _, version = record.parent.name.removesuffix(".dist-info").partition("-")
        listed = (line.split(",")[0] for line in record.read_text(errors="replace").splitlines() if line)
        totals[name] = sum(sizes.get(posixpath.normpath(posixpath.join(site, rel)), 0) for rel in listed)
        versions[name] = version
    return ranked(totals, version=versions)


def go_module_sizes(root: Path, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Code bytes per Go module in each Go binary of the payload (function sizes from `.gopclntab`,
    each function counted in the module whose path is the longest prefix of its package)."""
    rows = []
    for rel in sorted(sizes):
        path = root / rel
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as stream:
            if stream.read(4) != ELF_MAGIC:
                continue
            stream.seek(0)
            try:
                elf = open_elf(stream, sizes[rel])
                info, table = read_go_buildinfo(elf), read_go_function_table(elf)
            except ElfParseError:
                continue
            if info is None or table is None:
                continue
            totals = module_code_sizes(info, table.entries, table.names, table.end)
        versions = {**{module: version for module, version in info.modules}, info.main_module: "(main)"}
        versions[STANDARD_LIBRARY] = info.go_version
        rows += [{**row, "binary": rel} for row in ranked(totals, version=defaultdict(str, versions))]
    return rows


def module_code_sizes(info: GoBuildInfo, entries: tuple[int, ...], names: tuple[str, ...], end: int) -> dict[str, int]:
    modules = sorted({path for path, _ in info.modules} | {info.main_module} - {""}, key=len, reverse=True)
    totals: dict[str, int] = defaultdict(int)
    for index, (entry, name) in enumerate(zip(entries, names, strict=True)):
        following = entries[index + 1] if index + 1 < len(entries) else end
        totals[module_of(name, modules, info.main_module)] += max(following - entry, 0)
    return dict(totals)


def module_of(function: str, modules: list[str], main_module: str) -> str:
    """The module a Go function name belongs to: `example.com/m/pkg.(*T).F` → `example.com/m`."""
    slash = function.rfind("/")
    package = function[: function.find(".", slash + 1)] if "." in function[slash + 1 :] else function
    if package == "main":
        return main_module or "main"
    for module in modules:  # longest first
        if package == module or package.startswith(module + "/"):
            return module
    return STANDARD_LIBRARY


def read_overlay(out_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """The overlay's runlevel links (name → target) and the few files inspect reads (name → text),
    straight from the apkovl (a tar buildkit wrote; nothing is extracted)."""
    apkovl = out_dir / manifest["apkovl"]["file"]
    if not apkovl.is_file():
        found = sorted(out_dir.glob(APKOVL_GLOB))
        if not found:
            raise UserError(f"{out_dir}: no apkovl ({manifest['apkovl']['file']})")
        apkovl = found[0]
    wanted: dict[str, str] = {}
    try:
        with tarfile.open(apkovl, "r:gz") as archive:
            for member in archive:
                if member.issym() and member.name.startswith(RUNLEVELS):
                    wanted[member.name] = member.linkname
                elif member.isfile() and member.name in (RULESET, TRUSTED_KEY):
                    data = archive.extractfile(member)
                    wanted[member.name] = data.read().decode(errors="replace") if data else ""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{apkovl}: cannot read the overlay: {exc}") from None
    return wanted


def services(overlay: dict[str, str]) -> dict[str, list[str]]:
    levels: dict[str, list[str]] = defaultdict(list)
    for name in sorted(overlay):
        if name.startswith(RUNLEVELS):
            level, _, service = name.removeprefix(RUNLEVELS).partition("/")
            levels[level].append(service)
    return dict(levels)


def firewall_rules(ruleset: str) -> dict[str, list[dict[str, Any]]]:
    """The ports the ruleset accepts: inbound (with the redirect of port 80) and outbound, with the
    addresses an outbound rule is limited to. Each row keeps its rule as written."""
    defines = dict(DEFINE_RE.findall(ruleset))
    rules: dict[str, list[dict[str, Any]]] = {"inbound": [], "outbound": []}
    chain = ""
    for raw in ruleset.splitlines():
        line = raw.split("#", 1)[0].strip()
        if (started := CHAIN_RE.match(line)) is not None:
            chain = started.group(1)
            continue
        for name, value in defines.items():
            line = line.replace(f"${name}", value)
        direction = {"prerouting": "inbound", "input": "inbound", "output": "outbound"}.get(chain)
        matched = PORT_RULE_RE.search(line)
        if direction is None or matched is None or not ("accept" in line.split() or "redirect" in line):
            continue
        _, addresses, proto, port = matched.groups()
        row: dict[str, Any] = {"proto": proto, "port": port, "rule": line}
        if addresses:
            row["addresses"] = [address.strip() for address in addresses.split(",")]
        if "redirect to :" in line:
            row["redirect_to"] = line.rsplit("redirect to :", 1)[1].split()[0]
        rules[direction].append(row)
    redirected = {row["redirect_to"] for row in rules["inbound"] if "redirect_to" in row}
    for row in rules["inbound"]:
        if row["port"] in redirected:
            row["only_redirected"] = True  # the ruleset drops what did not come in on the redirect
    return rules


def gate_summary(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The verdict and each waiver that applied, with how many findings it waived and of which rules."""
    report_path = out_dir / GATE_REPORT
    signed = manifest["gate"]
    if not report_path.is_file():
        waivers = [{"id": w["id"], "reason": w["reason"], "findings": None, "rules": []} for w in signed["waivers"]]
        return {**{k: signed[k] for k in ("verdict", "profile", "objects", "errors")}, "waivers": waivers}
    try:
        report = GateReport.from_dict(json.loads(report_path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{report_path}: not a gate report ({type(exc).__name__}: {exc})") from None
    by_waiver: dict[str, dict[str, Any]] = {}
    for finding in report.waived:
        row = by_waiver.setdefault(
            finding.waiver or "?", {"id": finding.waiver or "?", "reason": finding.waiver_reason or "", "findings": 0}
        )
        row["findings"] += 1
        row.setdefault("rules", set()).add(finding.rule)
    waivers = [{**row, "rules": sorted(row["rules"])} for _, row in sorted(by_waiver.items())]
    return {
        "verdict": report.verdict,
        "profile": report.profile,
        "objects": len(report.objects),
        "errors": len(report.errors),
        "waivers": waivers,
    }


def signature_status(out_dir: Path, overlay: dict[str, str]) -> dict[str, Any]:
    """The manifest's signature checked with the buildkit.pub beside it; and whether that is the key
    the overlay trusts (the device checks with that one)."""
    status: dict[str, Any] = {"verified": False, "key_id": None, "trusted_comment": None, "error": None}
    signature_path = out_dir / SIGNATURE
    try:
        status["key_id"] = key_id_text(parse_signature(signature_path.read_text(), str(signature_path)).keynum)
        public = load_public_key(out_dir / PUBLIC_KEY)
        status["trusted_comment"] = verify_file(out_dir / MANIFEST, public, signature_path)
        status["verified"] = True
    except (UserError, VerificationFailed, OSError) as exc:
        status["error"] = str(exc)
    trusted = overlay.get(TRUSTED_KEY)
    status["overlay_key_id"] = load_public_key(trusted).key_id if trusted else None
    status["overlay_trusts_signer"] = bool(trusted) and status["overlay_key_id"] == status["key_id"]
    return status


def render_text(report: dict[str, Any]) -> str:
    payload, sizes = report["payload"], report["sizes"]
    lines = [
        f"{report['name']} {report['version']} ({report['kind']}): {payload['files']} files, "
        f"{human(payload['bytes'])} in the payload; image {human(payload['image_bytes'])}, "
        f"apkovl {human(payload['apkovl_bytes'])}",
    ]
    for title, key in (
        ("Directories", "directories"),
        ("Debian packages", "debian_packages"),
        ("Wheels", "wheels"),
        ("Go modules (code)", "go_modules"),
    ):
        rows = sizes[key]
        if not rows:
            continue
        lines += ["", f"{title}, largest first:"]
        for row in rows[:TEXT_ROWS]:
            extra = " ".join(str(row[k]) for k in ("version", "binary") if row.get(k))
            lines.append(f"  {human(row['bytes']):>10}  {row['name']}" + (f"  ({extra})" if extra else ""))
        if len(rows) > TEXT_ROWS:
            lines.append(f"  … {len(rows) - TEXT_ROWS} more (--format json lists them all)")
    lines += [f"note: {note}" for note in report["notes"]]
    gate = report["gate"]
    lines += [
        "",
        f"Gate: {gate['verdict']} (profile {gate['profile']}, {gate['objects']} ELF objects, {gate['errors']} errors)",
    ]
    for waiver in gate["waivers"]:
        count = "" if waiver["findings"] is None else f"{waiver['findings']} finding(s) "
        lines.append(f"  waived {count}by {waiver['id']}: {waiver['reason']}")
    lines += ["", signature_line(report["signature"])]
    lines += ["", "Services (OpenRC runlevels):"]
    lines += [f"  {level}: {', '.join(names)}" for level, names in report["services"].items()]
    lines += ["", "Firewall (accepted):"]
    for direction, rows in report["firewall"].items():
        for row in rows:
            to = f" → {row['redirect_to']}" if "redirect_to" in row else ""
            to += " (only as the target of that redirect)" if row.get("only_redirected") else ""
            where = f" to {', '.join(row['addresses'])}" if "addresses" in row else ""
            lines.append(f"  {direction:<8} {row['proto']} {row['port']}{to}{where}")
    return "\n".join(lines) + "\n"


def signature_line(signature: dict[str, Any]) -> str:
    if not signature["verified"]:
        return f"Signature: NOT VERIFIED: {signature['error']}"
    trust = (
        "the key the overlay trusts"
        if signature["overlay_trusts_signer"]
        else f"NOT the key the overlay trusts ({signature['overlay_key_id']})"
    )
    return f"Signature: valid, key {signature['key_id']} ({trust}); trusted comment: {signature['trusted_comment']}"


def human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / (1024 * 1024):.1f} MiB"


def inspection_ok(report: dict[str, Any]) -> bool:
    """What exit 1 means for inspect: the package would not be trusted as it is."""
    signature = report["signature"]
    return bool(signature["verified"] and signature["overlay_trusts_signer"] and report["gate"]["verdict"] == "pass")
