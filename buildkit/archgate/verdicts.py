"""The per-object verdict cache: what the gate learnt about one ELF object, kept by content.

An entry is everything `gate._check_object` finds before the object is placed in a tree: its
facts, the rule outcomes, the code hits and its link facts. Where the object lives (its path, the
waivers that match that path, the closure of its tree) is applied afresh on every run, so waivers
are not part of the key. The key is the object's sha256 and a fingerprint of the policy the rules
read: the profile's merged tables, every data file under verify/ (code and dispatch rules), the
scan setting, the gate's own code (buildkit's version and the archgate sources, so an edited rule
never reuses an old verdict) and the installed capstone and pyelftools. Entries are JSON, written
atomically; an unreadable entry is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import buildkit
from buildkit.archgate.profile import Profile
from buildkit.resources import VERIFY_DIR
from buildkit.target import profile_data

CACHE_SUBDIR = "gate-verdicts"
ENTRY_FORMAT = 1
ARCHGATE_DIR = Path(__file__).resolve().parent
# What decodes and parses the objects: another release may decide an instruction or a header otherwise.
VERDICT_LIBRARIES = ("capstone", "pyelftools")


@dataclass(frozen=True)
class VerdictCache:
    directory: str  # a string: a re-run asks once per object, and a Path costs more than the read
    policy: str  # hex digest of everything but the object that a verdict depends on
    made: set[str] = field(default_factory=set, compare=False)  # directories this run made or found

    def _entry_path(self, digest: str) -> tuple[str, str]:
        key = hashlib.sha256(f"{self.policy}:{digest}".encode()).hexdigest()
        # 16 subdirectories, not git's 256: a cold run makes each once, and a mkdir costs as much as
        # examining a small object (about 0.2 ms here)
        parent = f"{self.directory}/{key[:1]}"
        return parent, f"{parent}/{key}.json"

    def get(self, digest: str) -> dict[str, Any] | None:
        try:
            with open(self._entry_path(digest)[1], "rb") as handle:
                entry = json.loads(handle.read())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT or entry.get("sha256") != digest:
            return None
        return entry

    def put(self, digest: str, entry: dict[str, Any]) -> None:
        parent, path = self._entry_path(digest)
        data = json.dumps({"format": ENTRY_FORMAT, "sha256": digest, **entry}).encode()
        try:
            if parent not in self.made:
                os.makedirs(parent, exist_ok=True)
                self.made.add(parent)
            _write_renamed(path, data)
        except OSError:  # a read-only or full cache costs speed, not the verdict
            pass


def _write_renamed(path: str, data: bytes) -> None:
    """Written beside `path` and renamed over it, but not fsynced (a third of a cold run's time on
    its own): after a crash an entry may be empty or cut short, and either is invalid JSON, a miss."""
    import tempfile  # only a run that learns something new writes

    parent, name = os.path.split(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def open_cache(cache_root: Path, profile: Profile, scan_code: bool) -> VerdictCache:
    return VerdictCache(str(cache_root / CACHE_SUBDIR), policy_fingerprint(profile, scan_code))


def policy_fingerprint(profile: Profile, scan_code: bool) -> str:
    digest = hashlib.sha256()
    digest.update(f"buildkit {buildkit.__version__}; entry {ENTRY_FORMAT}; scan_code {scan_code}\n".encode())
    digest.update(f"{' '.join(_installed(VERDICT_LIBRARIES))}\n".encode())
    digest.update(json.dumps(profile_data(profile.source), sort_keys=True, default=str).encode())
    for path in _files(VERIFY_DIR) + _files(ARCHGATE_DIR, "*.py"):
        digest.update(f"\n{path.name}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _installed(distributions: tuple[str, ...]) -> list[str]:
    """The installed `name-version` of each distribution, by its .dist-info directory's name on
    sys.path: importlib.metadata would cost a cached run more than all of its lookups."""
    prefixes = tuple(f"{name}-" for name in distributions)
    found: list[str] = []
    for entry in dict.fromkeys(sys.path):
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip, or a path that is not there
            continue
        found.extend(n.removesuffix(".dist-info") for n in names if n.endswith(".dist-info") and n.startswith(prefixes))
    return sorted(found)


def _files(top: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in top.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts)
