"""The arch gate: every ELF object in the inputs against a target profile.

Rules per object, in order: it parses (a file that starts with \\x7fELF and does not parse is a
violation, never a skip); the header; `.ARM.attributes`; without attributes the Go build info;
and when neither says what the code needs (or `scan_code`), the Capstone scan. Trees then get the
dynamic-closure check. Waivers turn matching errors into `waived` findings that stay visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from elftools.elf.elffile import ELFFile

from buildkit.archgate.closure import LinkFacts, check_closure, holds_a_loader, link_facts
from buildkit.archgate.elfcheck import (
    AttributeParseError,
    ElfFile,
    Issue,
    attribute_value,
    check_attributes,
    check_header,
    describe_value,
    float_abi,
    open_elf,
    read_attributes,
)
from buildkit.archgate.gobuildinfo import GoBuildInfo, read_go_buildinfo, read_go_function_table
from buildkit.archgate.model import Finding, GateReport, ObjectInfo, Severity
from buildkit.archgate.profile import Profile, Waiver, load_profile, load_waivers
from buildkit.errors import UserError
from buildkit.progress import step
from buildkit.target import DEFAULT_PROFILE
from buildkit.walk import ArtifactTree, open_artifact, open_nested, size_from_env

if TYPE_CHECKING:  # the code scan loads Capstone: only when an object is scanned
    from buildkit.archgate.codescan import CodeHit

ELF_MAGIC = b"\x7fELF"
# strict: every DT_NEEDED must resolve in the tree; auto: only in a tree that holds its own loader
# (a root file system), elsewhere what is missing is `closure.external`; off: no closure check.
ClosureMode = Literal["strict", "auto", "off"]
CLOSURE_MODES: tuple[ClosureMode, ...] = ("strict", "auto", "off")
# Attribute findings the code cannot overrule: the section itself is damaged or unknown.
CLAIM_RULES_KEPT = ("attr.parse", "attr.unknown")
MAX_OBJECT_ENV = "BUILDKIT_MAX_OBJECT"
DEFAULT_MAX_OBJECT = 256 << 20  # the largest real payload object seen is a 30 MB Go or Rust binary
MAX_SECTIONS = 4096  # real objects have tens; each section is parsed, and the hostile ones have 150,000
MAX_NESTING = 4  # archives inside archives: a wheel in a tarball in an image is three
HEADER_IDENTITY_RULES = ("elf.machine", "elf.class", "elf.endian")
EVIDENCE_HITS = 5
EVIDENCE_NAMES = 12


def verify_artifacts(
    paths: Sequence[Path],
    profile: str = DEFAULT_PROFILE,
    scan_code: bool = False,
    waiver_files: Sequence[Path] = (),
    extra_waivers: Sequence[Waiver] = (),
    display_root: str | None = None,
    profile_base: Path | None = None,
    closure: ClosureMode = "auto",
) -> GateReport:
    """Gate files, trees and archives; `display_root` renames a single input in the findings."""
    if not paths:
        raise UserError("verify artifact: no input given: name at least one file, directory or archive")
    target = load_profile(profile, profile_base)
    waivers = load_waivers(target.lineage, waiver_files, extra_waivers)
    inputs: list[str] = []
    objects: list[ObjectInfo] = []
    findings: list[Finding] = []
    files = 0
    for path in paths:
        display = display_root if display_root is not None and len(paths) == 1 else None
        with open_artifact(Path(path), display) as tree, _gate_step(tree):
            result = _gate_tree(tree, target, _Options(scan_code, closure), waivers)
        inputs.append(tree.display)
        objects.extend(result.objects)
        findings.extend(result.findings)
        files += len(tree.files)
    findings.extend(unused_waivers(waivers, findings))
    return GateReport(
        profile=target.name,
        inputs=tuple(inputs),
        objects=tuple(sorted(objects, key=lambda o: o.path)),
        findings=tuple(sorted(findings, key=lambda f: (f.path, f.rule, f.severity))),
        files_scanned=files,
    )


GATE_STEP_MIN_FILES = 300  # smaller inputs are gated in about the time a progress line takes to read


def _gate_step(tree: ArtifactTree) -> contextlib.AbstractContextManager[object]:
    if len(tree.files) < GATE_STEP_MIN_FILES:
        return contextlib.nullcontext()
    return step(f"gating {tree.display} ({len(tree.files)} files)")


def unused_waivers(waivers: Sequence[Waiver], findings: Sequence[Finding]) -> list[Finding]:
    """A waiver given by a recipe or a file that matched nothing is a mistake (a typo in its rule or
    path) or stale: say so. Shipped waivers cover whole families of payloads and are not reported."""
    used = {f.waiver for f in findings if f.waiver}
    return [
        Finding(
            w.origin or "(waivers)",
            "waiver.unused",
            "warning",
            f"waiver {w.id!r} (rule {w.rule}, path {w.path}, symbol {w.symbol}) matched no finding",
            {"waiver": w.id},
        )
        for w in waivers
        if not w.shipped and w.id not in used
    ]


@dataclass
class _TreeResult:
    objects: list[ObjectInfo] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class _ObjectResult:
    info: ObjectInfo
    issues: list[Issue] = field(default_factory=list)
    hits: list[tuple[CodeHit, str | None]] = field(default_factory=list)  # with the symbol as resolved here
    unlisted_hits: int = 0
    link: LinkFacts | None = None


@dataclass(frozen=True)
class _Options:
    scan_code: bool
    closure: ClosureMode


def _gate_tree(
    tree: ArtifactTree, profile: Profile, options: _Options, waivers: Sequence[Waiver], depth: int = 0
) -> _TreeResult:
    result = _TreeResult(findings=list(tree.problems))
    links: dict[str, LinkFacts] = {}
    findings = _Findings(tree, profile, waivers)
    for rel in tree.files:
        if not _starts_like_elf(tree.root / rel):
            _gate_nested(tree, rel, profile, options, waivers, depth, result)
            continue
        checked = _check_object(tree, rel, profile, options.scan_code)
        result.objects.append(checked.info)
        result.findings.extend(findings.for_object(rel, checked))
        if checked.link is not None:
            links[rel] = checked.link
    # A wheel's libraries come from the system it is installed on.
    if tree.is_tree and not findings.in_wheel and options.closure != "off":
        partial = options.closure == "auto" and not holds_a_loader(tree.resolve, links, profile.closure)
        for rel, issue in check_closure(tree.resolve, links, profile.closure, partial):
            result.findings.append(findings.from_issue(rel, issue))
    return result


def _gate_nested(
    tree: ArtifactTree,
    rel: str,
    profile: Profile,
    options: _Options,
    waivers: Sequence[Waiver],
    depth: int,
    result: _TreeResult,
) -> None:
    """An archive inside the tree (a wheel in a tar, a .deb's data in an image...) is gated as a
    tree of its own, reported as `outer!inner!path`; an archive that cannot be read fails closed."""
    shown = tree.display_path(rel)
    try:
        with open_nested(tree.root / rel, shown) as inner:
            if inner is None:
                return
            if depth >= MAX_NESTING:
                result.findings.append(
                    _walk_error(
                        shown, "walk.too_deep", f"archives nested more than {MAX_NESTING} deep: not opened", depth=depth
                    )
                )
                return
            nested = _gate_tree(inner, profile, options, waivers, depth + 1)
    except UserError as exc:
        result.findings.append(_walk_error(shown, "walk.unreadable", f"an archive that cannot be read: {exc}"))
        return
    result.objects.extend(nested.objects)
    result.findings.extend(nested.findings)


def _walk_error(path: str, rule: str, message: str, **evidence: object) -> Finding:
    return Finding(
        path,
        rule,
        "error",
        message,
        dict(evidence),
        "only archives the gate can open (at most a few levels deep) belong in a payload",
    )


def _starts_like_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(ELF_MAGIC)) == ELF_MAGIC
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None


def _check_object(tree: ArtifactTree, rel: str, profile: Profile, scan_code: bool) -> _ObjectResult:
    """Every rule for one object. Anything that goes wrong while reading it is the `elf.parse`
    violation: the gate fails closed on what it cannot read."""
    path = tree.root / rel
    shown = tree.display_path(rel)
    if (too_big := _over_size_limit(path, shown)) is not None:
        return too_big
    # One read: pyelftools seeks before nearly every field it parses, and each seek would cost a
    # buffered file a new read() from the kernel; in memory the whole object parses several times faster.
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{shown}: cannot read: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        stream = io.BytesIO(data)
        elf = open_elf(stream, len(data))
        if len(elf.sections) > MAX_SECTIONS:
            return _limit_result(
                shown,
                digest,
                f"{len(elf.sections)} sections; the gate reads at most {MAX_SECTIONS}",
                sections=len(elf.sections),
                limit=MAX_SECTIONS,
            )
        reader = _pyelftools_reader(stream)
        return _inspect(elf, reader, tree, rel, shown, digest, profile, scan_code)
    except Exception as exc:  # noqa: BLE001 - pyelftools and the scan raise many kinds on damaged input
        issue = Issue(
            "elf.parse",
            "error",
            f"starts like an ELF but does not parse: {_one_line(exc)}",
            {"error": type(exc).__name__, "detail": _one_line(exc)},
        )
        return _ObjectResult(ObjectInfo(path=shown, sha256=digest, checks=("parse",)), [issue])


def _over_size_limit(path: Path, shown: str) -> _ObjectResult | None:
    """An object is read into memory once: one larger than the cap is a violation, never an
    out-of-memory kill (a sparse 8 GB file costs nothing on disk)."""
    size, limit = path.stat().st_size, size_from_env(MAX_OBJECT_ENV, DEFAULT_MAX_OBJECT)
    if size <= limit:
        return None
    return _limit_result(
        shown,
        "",
        f"{size} bytes; the gate reads objects of at most {limit} bytes ({MAX_OBJECT_ENV})",
        size=size,
        limit=limit,
    )


def _limit_result(shown: str, digest: str, message: str, **evidence: int) -> _ObjectResult:
    issue = Issue("elf.limits", "error", message, dict(evidence))
    return _ObjectResult(ObjectInfo(path=shown, sha256=digest, checks=("limits",)), [issue])


def _pyelftools_reader(stream: BinaryIO) -> ELFFile:
    """pyelftools builds every section and segment (dynamic, hash, notes, attributes, ...) and
    validates each on the way: that it can is what "parses" means for the gate, and the code scan
    disassembles through the same reader."""
    stream.seek(0)
    reader = _SectionsOnce(stream)
    for _ in reader.iter_sections():
        pass
    for _ in reader.iter_segments():
        pass
    return reader


class _SectionsOnce(ELFFile):
    """pyelftools' reader, building each section header and section once: linked sections (string
    and symbol tables) and the dynamic segment otherwise re-read the same headers ~100 times per
    object. The same calls happen in the same order, so the first error raised is the same."""

    def __init__(self, stream: BinaryIO) -> None:
        self._headers: dict[int, Any] = {}
        self._sections: dict[int, Any] = {}
        super().__init__(stream)

    def _get_section_header(self, n: int) -> Any:
        if n not in self._headers:
            self._headers[n] = super()._get_section_header(n)
        return self._headers[n]

    def _make_section(self, section_header: Any) -> Any:
        key = id(section_header)  # headers live in self._headers, so their ids stay theirs
        if key not in self._sections:
            self._sections[key] = super()._make_section(section_header)
        return self._sections[key]


def _inspect(
    elf: ElfFile,
    reader: ELFFile,
    tree: ArtifactTree,
    rel: str,
    shown: str,
    digest: str,
    profile: Profile,
    scan_code: bool,
) -> _ObjectResult:
    checks = ["header"]
    issues = check_header(elf, profile.header)
    info = ObjectInfo(path=shown, sha256=digest, elf_type=elf.type, machine=elf.machine, checks=("header",))
    if any(i.rule in HEADER_IDENTITY_RULES for i in issues):
        return _ObjectResult(info, issues)
    attributes = None
    try:
        attributes = read_attributes(elf)
    except AttributeParseError as exc:
        issues.append(Issue("attr.parse", "error", f".ARM.attributes does not parse: {exc}", {"detail": str(exc)}))
    if attributes is not None:
        checks.append("attributes")
        issues.extend(check_attributes(attributes, profile.attributes))
    go = read_go_buildinfo(elf)
    if go is not None:
        checks.append("go")
        issues.extend(_check_go(go, profile))
    result = _ObjectResult(info, issues)
    if scan_code or (attributes is None and (go is None or go.goarm_level is None)):
        checks.append("code")
        _add_code_hits(result, elf, reader, profile, go)
    abi = float_abi(elf, attributes)
    facts = link_facts(elf, rel, abi)
    result.link = facts if tree.is_tree else None
    cpu = attribute_value(attributes, "TAG_CPU_ARCH")
    result.info = replace(
        info,
        cpu_arch=describe_value("TAG_CPU_ARCH", cpu) if cpu is not None else None,
        float_abi=abi,
        interpreter=facts.interpreter,
        needed=facts.needed,
        soname=facts.soname,
        go_version=go.go_version if go else None,
        goarm=go.goarm if go else None,
        cgo_enabled=go.cgo_enabled if go else None,
        checks=tuple(checks),
    )
    return result


def _check_go(go: GoBuildInfo, profile: Profile) -> list[Issue]:
    level = go.goarm_level
    if level is None or level in profile.goarm:
        return []
    return [
        Issue(
            "go.goarm",
            "error",
            f"Go binary built with GOARM={go.goarm}; the profile allows GOARM "
            f"{', '.join(str(v) for v in sorted(profile.goarm))}",
            {"goarm": go.goarm, "go_version": go.go_version, "cgo_enabled": go.cgo_enabled, "main_path": go.main_path},
        )
    ]


def _add_code_hits(
    result: _ObjectResult, elf: ElfFile, reader: ELFFile, profile: Profile, go: GoBuildInfo | None
) -> None:
    from buildkit.archgate.codescan import scan_elf

    scan = scan_elf(reader, profile.code)
    go_functions = read_go_function_table(elf) if go and any(h.symbol is None for h in scan.hits) else None
    for hit in scan.hits:
        symbol = hit.symbol
        offset = hit.symbol_offset
        if symbol is None and go_functions is not None:
            symbol, offset = go_functions.symbol_at(hit.address) or (None, 0)
        result.hits.append((hit, _symbol_text(symbol, offset)))
    result.unlisted_hits = scan.total_hits - len(scan.hits)


def _symbol_text(symbol: str | None, offset: int) -> str | None:
    if symbol is None:
        return None
    return f"{symbol}+0x{offset:x}" if offset else symbol


class _Findings:
    """Turns issues and code hits of one tree into findings: paths, hints and waivers."""

    def __init__(self, tree: ArtifactTree, profile: Profile, waivers: Sequence[Waiver]) -> None:
        self.tree, self.profile, self.waivers = tree, profile, waivers
        self.in_wheel = tree.display.endswith(".whl")

    def _waiver(self, rule: str, rel: str, symbol: str | None) -> Waiver | None:
        bare = symbol.split("+0x", 1)[0] if symbol else None
        return next((w for w in self.waivers if w.matches(rule, rel, bare)), None)

    def _finding(
        self, rel: str, rule: str, severity: Severity, message: str, evidence: dict[str, Any], waiver: Waiver | None
    ) -> Finding:
        if waiver is not None and severity == "error":
            return Finding(
                self.tree.display_path(rel),
                rule,
                "waived",
                message,
                evidence,
                self.profile.hint(rule, self.in_wheel),
                waiver.id,
                waiver.reason,
            )
        return Finding(
            self.tree.display_path(rel),
            rule,
            severity,
            message,
            evidence,
            self.profile.hint(rule, self.in_wheel),
        )

    def from_issue(self, rel: str, issue: Issue) -> Finding:
        return self._finding(
            rel, issue.rule, issue.severity, issue.message, issue.evidence, self._waiver(issue.rule, rel, None)
        )

    def for_object(self, rel: str, checked: _ObjectResult) -> list[Finding]:
        code = self._code_findings(rel, checked)
        findings = [self.from_issue(rel, issue) for issue in checked.issues]
        if "code" in checked.info.checks and not any(f.severity == "error" for f in code):
            findings = self._code_decides(rel, findings)
        return findings + code

    def _code_decides(self, rel: str, findings: list[Finding]) -> list[Finding]:
        """Attributes are a claim, the instructions the evidence: when the scan found nothing the
        target lacks (or only waived, runtime-dispatched code), attributes above the profile are
        overstated (merged in from a few assembly objects), a warning that shows both."""
        overstated = [
            f
            for f in findings
            if f.rule not in CLAIM_RULES_KEPT and f.rule.startswith("attr.") and f.severity == "error"
        ]
        if not overstated:
            return findings
        claims = "; ".join(f.message for f in overstated)
        warning = self._finding(
            rel,
            "attr.overstated",
            "warning",
            f"build attributes claim more than the profile allows ({claims}), but the code scan found no "
            "instruction the target lacks: the code decides",
            {"attributes": [f.evidence for f in overstated], "code": "no instruction above the profile"},
            None,
        )
        return [f for f in findings if f not in overstated] + [warning]

    def _code_findings(self, rel: str, checked: _ObjectResult) -> list[Finding]:
        findings: list[Finding] = []
        groups: dict[tuple[str, str | None], list[tuple[CodeHit, str | None]]] = {}
        for hit, symbol in checked.hits:
            waiver = self._waiver(hit.rule, rel, symbol)
            groups.setdefault((hit.rule, waiver.id if waiver else None), []).append((hit, symbol))
        by_id = {w.id: w for w in self.waivers}
        for (rule, waiver_id), hits in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            findings.append(
                self._finding(
                    rel,
                    rule,
                    "error",
                    _hits_message(rule, hits),
                    _hits_evidence(hits),
                    by_id.get(waiver_id) if waiver_id else None,
                )
            )
        if checked.unlisted_hits:
            findings.append(
                self._finding(
                    rel,
                    "code.unlisted",
                    "error",
                    f"{checked.unlisted_hits} more instruction(s) above the target that the scan did not list",
                    {"count": checked.unlisted_hits},
                    self._waiver("code.unlisted", rel, None),
                )
            )
        return findings


def _hits_message(rule: str, hits: list[tuple[CodeHit, str | None]]) -> str:
    mnemonics = sorted({h.mnemonic for h, _ in hits})
    shown = ", ".join(mnemonics[:EVIDENCE_NAMES]) + (", ..." if len(mnemonics) > EVIDENCE_NAMES else "")
    return f"{len(hits)} instruction(s) the target lacks ({rule}): {shown}"


def _hits_evidence(hits: list[tuple[CodeHit, str | None]]) -> dict:
    return {
        "count": len(hits),
        "mnemonics": sorted({h.mnemonic for h, _ in hits}),
        "symbols": sorted({s.split("+0x", 1)[0] for _, s in hits if s})[:EVIDENCE_NAMES],
        "hits": [
            {
                "address": f"0x{h.address:x}",
                "section": h.section,
                "state": h.state,
                "instruction": f"{h.mnemonic} {h.op_str}".strip(),
                "symbol": s,
                "groups": list(h.groups),
            }
            for h, s in hits[:EVIDENCE_HITS]
        ],
    }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
