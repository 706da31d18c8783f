"""The arch gate: every ELF object in the inputs against a target profile.

Rules per object, in order: it parses (a file that starts with \\x7fELF and does not parse is a
violation, never a skip); the header; `.ARM.attributes`; without attributes the Go build info;
and when neither says what the code needs (or `scan_code`), the Capstone scan. Trees then get the
dynamic-closure check. Waivers turn matching errors into `waived` findings that stay visible.

Objects whose verdict the cache (archgate.verdicts) does not hold are examined in worker
processes, one per CPU (BUILDKIT_GATE_JOBS), largest first: the code scan is CPU-bound, and the
user waits for the wall time. A run whose verdicts are all cached never loads pyelftools,
Capstone or multiprocessing.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from buildkit.archgate.closure import LinkFacts, check_closure, holds_a_loader, link_facts
from buildkit.archgate.coderules import CodeHit, DispatchedHits
from buildkit.archgate.elfcheck import (
    AttributeParseError,
    ElfFile,
    Issue,
    TooManySections,
    attribute_value,
    check_attributes,
    check_header,
    describe_value,
    float_abi,
    open_elf,
    read_attributes,
)
from buildkit.archgate.model import ClosureMode, Finding, GateReport, ObjectInfo, Severity
from buildkit.archgate.profile import Profile, Waiver, load_profile, load_waivers
from buildkit.archgate.verdicts import VerdictCache, open_cache
from buildkit.errors import UserError
from buildkit.progress import step
from buildkit.target import DEFAULT_PROFILE
from buildkit.walk import (
    ELF_MAGIC,
    HEAD_BYTES,
    ArchiveKind,
    ArtifactTree,
    ExtractBudget,
    ExtractLimitExceeded,
    archive_kind,
    open_artifact,
    open_nested,
    size_from_env,
)

if TYPE_CHECKING:  # pyelftools' reader and the Go reader are loaded only when an object is parsed
    from elftools.elf.elffile import ELFFile

    from buildkit.archgate.gobuildinfo import GoBuildInfo

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
    scan_code: bool = True,
    waiver_files: Sequence[Path] = (),
    extra_waivers: Sequence[Waiver] = (),
    display_root: str | None = None,
    profile_base: Path | None = None,
    closure: ClosureMode = "auto",
    cache_dir: Path | None = None,
) -> GateReport:
    """Gate files, trees and archives; `display_root` renames a single input in the findings.
    With `cache_dir`, per-object verdicts are kept there by content (buildkit.archgate.verdicts)."""
    if not paths:
        raise UserError("verify artifact: no input given: name at least one file, directory or archive")
    target = load_profile(profile, profile_base)
    waivers = load_waivers(target.lineage, waiver_files, extra_waivers)
    cache = open_cache(cache_dir, target, scan_code) if cache_dir is not None else None
    inputs: list[str] = []
    objects: list[ObjectInfo] = []
    findings: list[Finding] = []
    files = 0
    platforms = image_platforms(target)
    for path in paths:
        display = display_root if display_root is not None and len(paths) == 1 else None
        options = _Options(scan_code, closure, cache, ExtractBudget(), platforms)
        with open_artifact(Path(path), display, options.budget, platforms) as tree, _gate_step(tree):
            result = _gate_tree(tree, target, options, waivers)
        inputs.append(tree.display)
        objects.extend(result.objects)
        findings.extend(result.findings)
        files += len(tree.files)
    findings.extend(unused_waivers(waivers, findings))
    if not scan_code and any("code" not in o.checks for o in objects):
        findings.extend(_scan_skipped(inputs))
    return GateReport(
        profile=target.name,
        inputs=tuple(inputs),
        objects=tuple(sorted(objects, key=lambda o: o.path)),
        findings=tuple(sorted(findings, key=lambda f: (f.path, f.rule, f.severity))),
        files_scanned=files,
    )


def _scan_skipped(inputs: Sequence[str]) -> list[Finding]:
    return [
        Finding(
            shown,
            "code.skipped",
            "info",
            "code scan skipped (--no-scan-code): the attributes decide, and attributes that lie go unnoticed",
        )
        for shown in inputs
    ]


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
    dispatched: tuple[DispatchedHits, ...] = ()
    link: LinkFacts | None = None


@dataclass(frozen=True)
class _Options:
    scan_code: bool
    closure: ClosureMode
    cache: VerdictCache | None = None
    budget: ExtractBudget = field(default_factory=ExtractBudget)  # shared by the archives of one input
    platforms: tuple[str, ...] = ()  # the container image platforms the board runs, preferred first


def image_platforms(profile: Profile) -> tuple[str, ...]:
    """The board's own image platform (linux/arm/v6 for a Pi 1), then those of the userlands it
    runs (Debian armel images say linux/arm/v5)."""
    target = profile.target
    return tuple(dict.fromkeys([target.oci_platform, *(u.oci_platform for u in target.userlands.values())]))


def _gate_tree(
    tree: ArtifactTree, profile: Profile, options: _Options, waivers: Sequence[Waiver], depth: int = 0
) -> _TreeResult:
    result = _TreeResult(findings=list(tree.problems))
    if tree.platform is not None:
        result.findings.append(_platform_finding(tree, options.platforms))
    links: dict[str, LinkFacts] = {}
    findings = _Findings(tree, profile, waivers)
    objects = []
    root = str(tree.root)
    for rel in tree.files:
        head = _head(os.path.join(root, rel))
        if head.startswith(ELF_MAGIC):
            objects.append(rel)
        elif kind := archive_kind(head):
            _gate_nested(tree, rel, kind, profile, options, waivers, depth, result)
    checked_objects = _check_objects(tree, objects, profile, options)
    for rel in objects:
        checked = checked_objects[rel]
        result.objects.append(checked.info)
        result.findings.extend(findings.for_object(rel, checked))
        if checked.link is not None:
            links[rel] = checked.link
    # A wheel's libraries come from the system it is installed on.
    if tree.is_tree and not findings.in_wheel and options.closure != "off":
        partial_tree = options.closure == "auto" and not holds_a_loader(tree.resolve, links, profile.closure)
        for rel, issue in check_closure(tree.resolve, links, profile.closure, partial_tree):
            result.findings.append(findings.from_issue(rel, issue))
    return result


def _gate_nested(
    tree: ArtifactTree,
    rel: str,
    kind: ArchiveKind,
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
        with open_nested(tree.root / rel, kind, shown, options.budget, options.platforms) as inner:
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
    except ExtractLimitExceeded as exc:
        result.findings.append(
            _walk_error(
                shown,
                "walk.limits",
                f"not opened: with the archives before it, the input unpacks to {exc.spent} bytes, "
                f"more than the limit of {exc.limit} (BUILDKIT_MAX_EXTRACT)",
                bytes=exc.spent,
                limit=exc.limit,
            )
        )
        return
    except UserError as exc:
        result.findings.append(_walk_error(shown, "walk.unreadable", f"an archive that cannot be read: {exc}"))
        return
    result.objects.extend(nested.objects)
    result.findings.extend(nested.findings)


def _platform_finding(tree: ArtifactTree, platforms: tuple[str, ...]) -> Finding:
    """A container image says what it runs on: one the board does not run is a violation."""
    evidence = {"platform": tree.platform, "allowed": list(platforms)}
    if tree.platform in platforms:
        return Finding(tree.display, "image.platform", "info", f"image platform {tree.platform}", evidence)
    return Finding(
        tree.display,
        "image.platform",
        "error",
        f"image platform {tree.platform}; the board runs {' or '.join(platforms)}",
        evidence,
        f"build the image for the board: docker buildx build --platform {platforms[0]}",
    )


def _walk_error(path: str, rule: str, message: str, **evidence: object) -> Finding:
    return Finding(
        path,
        rule,
        "error",
        message,
        dict(evidence),
        "only archives the gate can open (at most a few levels deep) belong in a payload",
    )


def _head(path: str) -> bytes:
    """Enough of a file to tell an ELF object or an archive (walk.archive_kind) from the rest."""
    try:
        fd = os.open(path, os.O_RDONLY)  # not open(): a buffered file object costs more than the read
        try:
            return os.read(fd, HEAD_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None


@dataclass(frozen=True)
class _Pending:
    """An object the cache had no verdict for: examined here or in a worker process."""

    rel: str
    shown: str
    digest: str
    size: int


def _check_objects(
    tree: ArtifactTree, rels: Sequence[str], profile: Profile, options: _Options
) -> dict[str, _ObjectResult]:
    """Every rule for each object, or its verdict from the cache; the objects the cache does not
    know are examined on every CPU the process may use (the scan is CPU-bound, one object each)."""
    results: dict[str, _ObjectResult] = {}
    pending: list[_Pending] = []
    for rel in rels:
        known = _known_result(tree, rel, options)
        if isinstance(known, _Pending):
            pending.append(known)
        else:
            results[rel] = known
    for item, result in _examine_all(tree.root, pending, profile, options.scan_code):
        results[item.rel] = result
        if options.cache:
            options.cache.put(item.digest, _to_entry(result))
    return results


def _known_result(tree: ArtifactTree, rel: str, options: _Options) -> _ObjectResult | _Pending:
    """What is decided without parsing: the size cap, the mapping, the cached verdict. The digest
    is taken through a read-only mapping (never into memory whole)."""
    path = os.path.join(tree.root, rel)
    shown = tree.display_path(rel)
    if (too_big := _over_size_limit(path, shown)) is not None:
        return too_big
    try:
        with _mapped(path) as data:
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
    except _Unmappable as exc:
        return _limit_result(shown, "", f"{exc.size} bytes cannot be mapped: {exc.reason}", size=exc.size)
    except OSError as exc:
        raise UserError(f"{shown}: cannot read: {exc.strerror}") from None
    cached = options.cache.get(digest) if options.cache else None
    if cached is not None:
        return _from_entry(cached, shown, rel)
    return _Pending(rel, shown, digest, size)


class _Unmappable(Exception):
    def __init__(self, size: int, reason: str) -> None:
        super().__init__(reason)
        self.size, self.reason = size, reason


@contextlib.contextmanager
def _mapped(path: str | Path) -> Iterator[mmap.mmap]:
    """The file as a read-only mapping: the kernel pages in what the rules touch."""
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ENOMEM: no address space left for it; ValueError: empty
            raise _Unmappable(os.fstat(handle.fileno()).st_size, _one_line(exc)) from None
        with data:
            yield data


JOBS_ENV = "BUILDKIT_GATE_JOBS"
MIN_PARALLEL_BYTES = 1 << 20  # less than this is examined sooner than worker processes start
BATCHES_PER_JOB = 8  # a big object goes to a worker alone, small ones a few at a time (each trip costs)
MAX_BATCH = 16


def _examine_all(
    root: Path, pending: list[_Pending], profile: Profile, scan_code: bool
) -> Iterator[tuple[_Pending, _ObjectResult]]:
    """On every CPU the process may use (BUILDKIT_GATE_JOBS sets how many; without it a little
    work stays in this process), largest first, so that a big object does not end the run alone."""
    pending = sorted(pending, key=lambda item: -item.size)
    jobs = _jobs(sum(item.size for item in pending))
    if min(jobs, len(pending)) < 2:
        for item in pending:
            yield item, _examine_path(root, item, profile, scan_code)
        return
    import multiprocessing  # not for a run whose verdicts all come from the cache
    from concurrent.futures import ProcessPoolExecutor

    import buildkit.archgate.codescan
    import buildkit.archgate.elfreader  # noqa: F401 - loaded once here, not once per worker

    _FORKED_WORK[:] = [(root, profile, scan_code)]
    gc.freeze()  # the workers' collections then leave the inherited objects' pages unwritten (copy-on-write)
    context = multiprocessing.get_context("fork")  # the workers inherit the loaded modules and _FORKED_WORK
    executor = ProcessPoolExecutor(min(jobs, len(pending)), mp_context=context)
    try:
        batches = _batches(pending, sum(item.size for item in pending) // (BATCHES_PER_JOB * jobs))
        for batch, results in zip(batches, executor.map(_examine_in_worker, batches), strict=True):
            yield from zip(batch, results, strict=True)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        _FORKED_WORK.clear()
        gc.unfreeze()


# What every worker examines with, inherited when it is forked rather than sent with each object:
# sending the profile costs more than a small object's scan, and a new copy per object would defeat
# the caches the scan keeps by its rules (the verdict per distinct encoding).
_FORKED_WORK: list[tuple[Path, Profile, bool]] = []


def _examine_in_worker(batch: list[_Pending]) -> list[_ObjectResult]:
    root, profile, scan_code = _FORKED_WORK[0]
    return [_examine_path(root, item, profile, scan_code) for item in batch]


def _batches(pending: list[_Pending], target_bytes: int) -> list[list[_Pending]]:
    """Consecutive objects (largest first) grouped up to `target_bytes` or MAX_BATCH objects."""
    batches: list[list[_Pending]] = []
    size = 0
    for item in pending:
        if not batches or size + item.size > target_bytes or len(batches[-1]) >= MAX_BATCH:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item.size
    return batches


def _jobs(work_bytes: int) -> int:
    raw = os.environ.get(JOBS_ENV, "")
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise UserError(f"{JOBS_ENV}={raw!r}: expected a whole number of processes, at least 1")
        return int(raw)
    return len(os.sched_getaffinity(0)) if work_bytes >= MIN_PARALLEL_BYTES else 1


def _examine_path(root: Path, item: _Pending, profile: Profile, scan_code: bool) -> _ObjectResult:
    try:
        with _mapped(root / item.rel) as data:
            return _examine(data, item.rel, item.shown, item.digest, profile, scan_code)
    except _Unmappable as exc:
        return _limit_result(item.shown, "", f"{exc.size} bytes cannot be mapped: {exc.reason}", size=exc.size)
    except OSError as exc:
        raise UserError(f"{item.shown}: cannot read: {exc.strerror}") from None


def _examine(data: mmap.mmap, rel: str, shown: str, digest: str, profile: Profile, scan_code: bool) -> _ObjectResult:
    """Anything that goes wrong while reading the object is the `elf.parse` violation: the gate
    fails closed on what it cannot read."""
    stream = cast(BinaryIO, data)  # a mapping reads, seeks and tells as a file does
    try:
        try:
            elf = open_elf(stream, len(data), MAX_SECTIONS)
        except TooManySections as exc:
            return _limit_result(shown, digest, str(exc), sections=exc.count, limit=exc.limit)
        from buildkit.archgate.elfreader import pyelftools_reader  # pyelftools: not for cached verdicts

        reader = pyelftools_reader(stream)
        return _inspect(elf, reader, rel, shown, digest, profile, scan_code)
    except Exception as exc:  # noqa: BLE001 - pyelftools and the scan raise many kinds on damaged input
        issue = Issue(
            "elf.parse",
            "error",
            f"starts like an ELF but does not parse: {_one_line(exc)}",
            {"error": type(exc).__name__, "detail": _one_line(exc)},
        )
        return _ObjectResult(ObjectInfo(path=shown, sha256=digest, checks=("parse",)), [issue])


def _to_entry(result: _ObjectResult) -> dict[str, Any]:
    """What the cache keeps of a result: all of it but where the object was. The records' fields
    as they are, for json to write at once (asdict deep-copies every value, which json does not need)."""
    link = result.link
    return {
        "info": _fields(result.info, leave_out="path"),
        "issues": [_fields(issue) for issue in result.issues],
        "hits": [[_fields(hit), symbol] for hit, symbol in result.hits],
        "unlisted_hits": result.unlisted_hits,
        "dispatched": [
            {**_fields(group), "examples": [_fields(hit) for hit in group.examples]} for group in result.dispatched
        ],
        "link": None if link is None else _fields(link, leave_out="rel"),
    }


def _fields(record: Any, leave_out: str = "") -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name != leave_out}


def _from_entry(entry: dict[str, Any], shown: str, rel: str) -> _ObjectResult:
    hits = [(CodeHit(**_tuples(hit)), symbol) for hit, symbol in entry["hits"]]
    dispatched = [
        DispatchedHits(**{**group, "examples": tuple(CodeHit(**_tuples(h)) for h in group["examples"])})
        for group in entry["dispatched"]
    ]
    link = entry["link"]
    return _ObjectResult(
        info=ObjectInfo(path=shown, **_tuples(entry["info"])),
        issues=[Issue(**issue) for issue in entry["issues"]],
        hits=hits,
        unlisted_hits=entry["unlisted_hits"],
        dispatched=tuple(dispatched),
        link=None if link is None else LinkFacts(rel=rel, **_tuples(link)),
    )


def _tuples(record: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


def _over_size_limit(path: str, shown: str) -> _ObjectResult | None:
    """An object is read into memory once: one larger than the cap is a violation, never an
    out-of-memory kill (a sparse 8 GB file costs nothing on disk)."""
    size, limit = os.stat(path).st_size, size_from_env(MAX_OBJECT_ENV, DEFAULT_MAX_OBJECT)
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


def _inspect(
    elf: ElfFile,
    reader: ELFFile,
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
    from buildkit.archgate.gobuildinfo import read_go_buildinfo

    go = read_go_buildinfo(elf)
    if go is not None:
        checks.append("go")
        issues.extend(_check_go(go, profile))
    result = _ObjectResult(info, issues)
    if scan_code or (attributes is None and (go is None or go.goarm_level is None)):
        checks.append(_add_code_hits(result, elf, reader, profile, go, link_facts(elf, rel, None).soname))
    abi = float_abi(elf, attributes)
    facts = link_facts(elf, rel, abi)
    result.link = facts
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
    result: _ObjectResult, elf: ElfFile, reader: ELFFile, profile: Profile, go: GoBuildInfo | None, soname: str | None
) -> str:
    """The code scan's hits into `result`; the check it made: "code", or "limits" when one of the
    scan's own bounds stopped it (then the code decides nothing)."""
    from buildkit.archgate.codescan import scan_elf

    scan = scan_elf(reader, profile.code, soname, elf)
    if scan.limit is not None:
        figure, limit = scan.limit_evidence[scan.limit], scan.limit_evidence["limit"]
        result.issues.append(
            Issue(
                "elf.limits",
                "error",
                f"the code scan stopped after {figure} {scan.limit}; it scans at most {limit} per object",
                dict(scan.limit_evidence),
            )
        )
        return "limits"
    result.dispatched = scan.dispatched
    from buildkit.archgate.gobuildinfo import read_go_function_table

    go_functions = read_go_function_table(elf) if go and any(h.symbol is None for h in scan.hits) else None
    for hit in scan.hits:
        symbol = hit.symbol
        offset = hit.symbol_offset
        if symbol is None and go_functions is not None:
            symbol, offset = go_functions.symbol_at(hit.address) or (None, 0)
        result.hits.append((hit, _symbol_text(symbol, offset)))
    result.unlisted_hits = scan.total_hits - len(scan.hits)
    return "code"


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
        findings.extend(self._dispatched_findings(rel, checked))
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

    def _dispatched_findings(self, rel: str, checked: _ObjectResult) -> list[Finding]:
        """Hits in runtime-dispatched code (verify/dispatch/): waived by the rule, and shown."""
        findings = []
        for group in checked.dispatched:
            hits = [(h, _symbol_text(h.symbol, h.symbol_offset)) for h in group.examples]
            findings.append(
                Finding(
                    self.tree.display_path(rel),
                    group.rule,
                    "waived",
                    f"{_hits_message(group.rule, hits, group.count)}; waived: runtime-dispatch ({group.dispatch})",
                    _hits_evidence(hits, group.count),
                    "",
                    f"runtime-dispatch ({group.dispatch})",
                    f"{group.reason} (source: {group.source})",
                )
            )
        return findings


def _hits_message(rule: str, hits: list[tuple[CodeHit, str | None]], count: int | None = None) -> str:
    mnemonics = sorted({h.mnemonic for h, _ in hits})
    shown = ", ".join(mnemonics[:EVIDENCE_NAMES]) + (", ..." if len(mnemonics) > EVIDENCE_NAMES else "")
    return f"{len(hits) if count is None else count} instruction(s) the target lacks ({rule}): {shown}"


def _hits_evidence(hits: list[tuple[CodeHit, str | None]], count: int | None = None) -> dict:
    return {
        "count": len(hits) if count is None else count,
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
