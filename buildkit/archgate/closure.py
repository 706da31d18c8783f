"""The dynamic closure of a tree: what each process would load on the device, resolved in the tree.

For every dynamic executable the interpreter must be one the profile knows (it fixes the float ABI
of the process) and every DT_NEEDED library, transitively, must be found inside the tree the way
the loader looks for it: DT_RPATH/DT_RUNPATH first, then the profile's library directories, with
symbolic links followed inside the tree (the walker's resolver, the tree's root as `/`). A library
of the other float ABI in a process is a violation: its calls would pass floating-point arguments
in the wrong registers.
"""

from __future__ import annotations

import functools
import posixpath
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from buildkit.archgate.elfcheck import PT_DYNAMIC, PT_INTERP, SHT_DYNAMIC, ElfFile, Issue
from buildkit.archgate.profile import ClosureRules

MAX_LISTED = 5
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29


@dataclass(frozen=True)
class LinkFacts:
    rel: str  # the object's path in the tree (POSIX, no leading '/')
    interpreter: str | None
    needed: tuple[str, ...]
    rpaths: tuple[str, ...]  # DT_RPATH / DT_RUNPATH entries as stored
    soname: str | None
    float_abi: str | None

    @property
    def search_paths(self) -> tuple[str, ...]:
        """The run paths with $ORIGIN expanded to the object's directory in the tree."""
        origin = "/" + posixpath.dirname(self.rel)
        return tuple(p.replace("${ORIGIN}", origin).replace("$ORIGIN", origin) for p in self.rpaths)


def link_facts(elf: ElfFile, rel: str, float_abi: str | None) -> LinkFacts:
    entries = _dynamic_entries(elf)
    string = _dynamic_strings(elf, entries)
    paths = tuple(p for tag, value in entries if tag in (DT_RPATH, DT_RUNPATH) for p in string(value).split(":") if p)
    soname = next((string(value) for tag, value in entries if tag == DT_SONAME), None)
    needed = tuple(string(value) for tag, value in entries if tag == DT_NEEDED)
    return LinkFacts(rel, _interpreter(elf), needed, paths, soname, float_abi)


def _interpreter(elf: ElfFile) -> str | None:
    segment = elf.segment_of_type(PT_INTERP)
    if segment is None:
        return None
    return elf.read(segment.offset, segment.filesz).split(b"\0", 1)[0].decode("utf-8", "replace")


def _dynamic_entries(elf: ElfFile) -> list[tuple[int, int]]:
    """(d_tag, d_val) pairs up to DT_NULL, from PT_DYNAMIC (or the .dynamic section)."""
    where = elf.segment_of_type(PT_DYNAMIC)
    offset, size = (where.offset, where.filesz) if where else (0, 0)
    if where is None and (section := elf.section_of_type(SHT_DYNAMIC)) is not None:
        offset, size = section.offset, section.size
    fmt = ("<" if elf.little_endian else ">") + ("iI" if elf.elfclass == 32 else "qQ")
    data = elf.read(offset, size - size % struct.calcsize(fmt)) if size else b""
    entries = []
    for tag, value in struct.iter_unpack(fmt, data):
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    return entries


def _dynamic_strings(elf: ElfFile, entries: list[tuple[int, int]]) -> Callable[[int], str]:
    address = next((v for t, v in entries if t == DT_STRTAB), None)
    size = next((v for t, v in entries if t == DT_STRSZ), 0)
    offset = elf.file_offset(address, size) if address is not None else None
    table = elf.read(offset, size) if offset is not None else b""

    def string(at: int) -> str:
        end = table.find(b"\0", at)
        return table[at:end].decode("utf-8", "replace") if 0 <= at < len(table) and end >= 0 else f"<bad string {at}>"

    return string


Resolver = Callable[[str], "str | None"]  # a device path -> the tree-relative path it names (ArtifactTree.resolve)


def holds_a_loader(resolve: Resolver, objects: dict[str, LinkFacts], rules: ClosureRules) -> bool:
    """A tree with one of the target's loaders in it is a root file system: it must be complete."""
    return any(resolve(i.path) in objects for i in rules.interpreters)


def check_closure(
    resolve: Resolver, objects: dict[str, LinkFacts], rules: ClosureRules, partial: bool = False
) -> list[tuple[str, Issue]]:
    """Findings (object path, issue) for every process of the tree and for every loadable library.
    In a `partial` tree (one Debian package, a wheel's libraries: no loader of its own) what it does
    not hold comes from the system it is installed on: `closure.external`, for information."""
    resolve = functools.cache(resolve)
    find = _library_finder(resolve, objects, rules)
    report = _ClosureReport(partial)
    for facts in objects.values():
        if facts.interpreter is not None:
            _check_process(resolve, find, facts, objects, rules, report)
    for facts in objects.values():
        if facts.interpreter is None and facts.needed:
            _walk_libraries(find, facts, facts.float_abi, rules, report)
    return report.issues()


LibraryFinder = Callable[[str, tuple[str, ...]], "LinkFacts | None"]  # (DT_NEEDED name, run paths) -> the library


def _library_finder(resolve: Resolver, objects: dict[str, LinkFacts], rules: ClosureRules) -> LibraryFinder:
    """The loader's search, asked once per name and run paths: every object looks for libc alike."""

    @functools.cache
    def find(name: str, search_paths: tuple[str, ...]) -> LinkFacts | None:
        if "/" in name:
            candidates: Iterator[str] = iter((name,))
        else:
            candidates = (posixpath.join(d, name) for d in (*search_paths, *rules.lib_dirs))
        for candidate in candidates:
            rel = resolve(candidate)
            if rel is not None and rel in objects:
                return objects[rel]
        return None

    return find


def _check_process(
    resolve: Resolver,
    find: LibraryFinder,
    exe: LinkFacts,
    objects: dict[str, LinkFacts],
    rules: ClosureRules,
    report: _ClosureReport,
) -> None:
    interpreter = rules.interpreter(exe.interpreter or "")
    if interpreter is None:
        known = ", ".join(i.path for i in rules.interpreters)
        report.add(
            exe.rel,
            "closure.interpreter",
            f"interpreter {exe.interpreter} is not one the target runs ({known})",
            {"interpreter": exe.interpreter},
        )
    elif resolve(interpreter.path) not in objects:
        report.add(
            exe.rel,
            "closure.missing",
            f"interpreter {interpreter.path} is not in the tree",
            {"library": interpreter.path},
        )
    process_abi = interpreter.float_abi if interpreter else exe.float_abi
    if exe.float_abi and process_abi and exe.float_abi != process_abi:
        report.add(
            exe.rel,
            "closure.float_abi",
            f"{exe.float_abi}-float executable with the {process_abi}-float interpreter {exe.interpreter}",
            {"object_float_abi": exe.float_abi, "process_float_abi": process_abi},
        )
    _walk_libraries(find, exe, process_abi, rules, report)


def _walk_libraries(
    find: LibraryFinder, start: LinkFacts, process_abi: str | None, rules: ClosureRules, report: _ClosureReport
) -> None:
    seen = {start.rel}
    queue = [start]
    while queue:
        user = queue.pop(0)
        search_paths = user.search_paths
        for name in user.needed:
            library = find(name, search_paths)
            if library is None:
                report.add(
                    user.rel,
                    "closure.missing",
                    f"needs {name}, which is not in the tree",
                    {"library": name, "searched": list(_search_dirs(user, rules))},
                )
                continue
            if library.float_abi and process_abi and library.float_abi != process_abi:
                report.add(
                    library.rel,
                    "closure.float_abi",
                    f"{library.float_abi}-float library loaded by a {process_abi}-float process",
                    {"object_float_abi": library.float_abi, "process_float_abi": process_abi},
                    process=start.rel,
                )
            if library.rel not in seen:
                seen.add(library.rel)
                queue.append(library)


def _search_dirs(user: LinkFacts, rules: ClosureRules) -> Iterator[str]:
    yield from user.search_paths
    yield from rules.lib_dirs


class _ClosureReport:
    """Collects one finding per (object, rule, subject) and the processes it concerns."""

    def __init__(self, partial: bool) -> None:
        self._found: dict[tuple[str, str, str], tuple[str, dict, list[str]]] = {}
        self._partial = partial

    def add(self, rel: str, rule: str, message: str, evidence: dict, process: str | None = None) -> None:
        if rule == "closure.missing" and self._partial:
            rule, message = "closure.external", message.replace("not in the tree", "not in this partial tree")
        key = (rel, rule, message)
        _, _, processes = self._found.setdefault(key, (message, evidence, []))
        if process and process not in processes:
            processes.append(process)

    def issues(self) -> list[tuple[str, Issue]]:
        found = []
        for (rel, rule, _), (message, evidence, processes) in sorted(self._found.items()):
            if processes:
                evidence = {**evidence, "loaded_by": processes[:MAX_LISTED], "loaded_by_count": len(processes)}
            found.append((rel, Issue(rule, "info" if rule == "closure.external" else "error", message, evidence)))
        return found
