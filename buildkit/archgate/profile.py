"""Target profiles and waivers: all gate policy is data in verify/, loaded into frozen dataclasses.

A profile (verify/profiles/<name>.toml) says what a target CPU runs: the ELF header it accepts, an
allow-list per build-attribute tag (by the tag's name in the ARM ABI addenda), the GOARM levels, the
code-scan rules and the dynamic loaders with their float ABIs; its [target] table describes the
board (buildkit/target.py). A new board is a new file, not code.

Runtime-dispatch rules (`[[dispatch]]` in verify/dispatch/*.toml) name code that runs only after a
runtime CPU check; every profile's code scan reads them.

A waiver (`[[waiver]]` in verify/waivers/*.toml, in a file given on the command line, or in a
recipe's [gate]) turns matching errors into `waived` findings that stay in the report.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

from buildkit.archgate.coderules import CodeRules
from buildkit.archgate.elfcheck import ARM_ATTRIBUTE_TAGS
from buildkit.errors import UserError
from buildkit.resources import PROFILES_DIR, VERIFY_DIR, WAIVERS_DIR
from buildkit.schema import Invalid, Where, from_table, read_toml
from buildkit.target import Target, available_profiles, profile_data, profile_lineage, profile_path

__all__ = [
    "PROFILES_DIR",
    "VERIFY_DIR",
    "WAIVERS_DIR",
    "Profile",
    "Waiver",
    "available_profiles",
    "load_profile",
    "load_waivers",
]


@dataclass(frozen=True)
class HeaderRules:
    elf_class: int = field(metadata={"toml": "class"})
    endian: Literal["little", "big"]
    machine: str  # pyelftools e_machine name, e.g. "EM_ARM"
    eabi_versions: frozenset[int]
    eabi0_relocatable: bool = False  # EABI version 0 in an ET_REL object is a warning instead of a violation
    be8: bool = False


@dataclass(frozen=True)
class AttributeRule:
    allow: frozenset[int]
    warn: frozenset[int] = frozenset()
    name: str = field(default="", metadata={"internal": True})  # as in the ARM ABI addenda, e.g. "Tag_CPU_arch"

    @property
    def key(self) -> str:
        """The tag as pyelftools names it ("TAG_CPU_ARCH")."""
        return self.name.upper()

    @property
    def rule_id(self) -> str:
        return "attr." + self.name[len("Tag_") :].lower()


@dataclass(frozen=True)
class Interpreter:
    path: str
    float_abi: Literal["soft", "hard"]


@dataclass(frozen=True)
class ClosureRules:
    interpreters: tuple[Interpreter, ...]
    lib_dirs: tuple[str, ...]

    def interpreter(self, path: str) -> Interpreter | None:
        return next((i for i in self.interpreters if i.path == path), None)


@dataclass(frozen=True)
class GoRules:
    goarm: frozenset[int]


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Profile:
    info: ProfileInfo = field(metadata={"toml": "profile"})
    header: HeaderRules
    attribute_rules: dict[str, AttributeRule] = field(metadata={"toml": "attributes"})
    go: GoRules
    code: CodeRules
    closure: ClosureRules
    target: Target
    hints: dict[str, str] = field(default_factory=dict)
    source: Path = field(default=Path(), metadata={"internal": True})
    lineage: tuple[str, ...] = field(default=(), metadata={"internal": True})  # itself, then what it extends

    def validate(self) -> None:
        for name in self.attribute_rules:
            if not name.startswith("Tag_") or name.upper() not in ARM_ATTRIBUTE_TAGS:
                raise Invalid(
                    f"attributes.{name}",
                    "not an ARM build attribute tag name (expected a name like Tag_CPU_arch from the ARM ABI addenda)",
                )

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def description(self) -> str:
        return self.info.description

    @property
    def goarm(self) -> frozenset[int]:
        return self.go.goarm

    @cached_property  # read once per object examined
    def attributes(self) -> tuple[AttributeRule, ...]:
        return tuple(replace(rule, name=name) for name, rule in self.attribute_rules.items())

    def hint(self, rule: str, in_wheel: bool = False) -> str:
        """The most specific hint: for an object in a wheel the "wheel:" entries first, then the rule
        id itself, then its family ("attr.*")."""
        family = rule.split(".", 1)[0] + ".*"
        keys = [rule, family]
        if in_wheel:
            keys = [f"wheel:{rule}", f"wheel:{family}", *keys]
        return next((self.hints[k] for k in keys if k in self.hints), "")


# What a waiver may turn into `waived`: claims and evidence about the code. An ELF of another
# machine or class, or an unsafe archive member, is never acceptable, so `elf.*` and `walk.*` are not.
WAIVABLE_FAMILIES = ("attr", "go", "code", "closure")


@dataclass(frozen=True)
class Waiver:
    """Turns matching errors into waived findings; shipped ones must say how they were verified."""

    id: str
    rule: str  # fnmatch glob over rule ids
    reason: str
    path: str = "*"  # fnmatch glob over the object's path inside its artifact
    symbol: str = "*"  # fnmatch glob over a code hit's enclosing symbol
    verified: str = ""
    profiles: tuple[str, ...] = ()
    origin: str = field(default="", metadata={"internal": True})  # the file or recipe it came from

    def validate(self) -> None:
        family, dot, rest = self.rule.partition(".")
        if family not in WAIVABLE_FAMILIES or not dot or not rest:
            raise Invalid(
                "rule",
                f"{self.rule!r}: a waiver names a rule of one family, as "
                f"{' / '.join(f + '.NAME' for f in WAIVABLE_FAMILIES)} (globs after the dot); "
                "elf.* and walk.* cannot be waived",
            )

    @property
    def shipped(self) -> bool:
        return self.origin.startswith(str(WAIVERS_DIR))

    def applies_to(self, lineage: Sequence[str]) -> bool:
        return not self.profiles or bool(set(self.profiles) & set(lineage))

    def matches(self, rule: str, path: str, symbol: str | None) -> bool:
        if (
            rule.split(".", 1)[0] not in WAIVABLE_FAMILIES
            or not fnmatch.fnmatchcase(rule, self.rule)
            or not fnmatch.fnmatchcase(path, self.path)
        ):
            return False
        if self.symbol == "*":
            return True
        return symbol is not None and fnmatch.fnmatchcase(symbol, self.symbol)


@dataclass(frozen=True)
class WaiverFile:
    waiver: tuple[Waiver, ...] = ()


def load_profile(name_or_file: str, base_dir: Path | None = None) -> Profile:
    """A profile by name (verify/profiles/<name>.toml) or by the path of a TOML file (relative to
    `base_dir` when given: a recipe's profile is relative to the recipe)."""
    path = profile_path(name_or_file, base_dir)
    profile = from_table(Profile, profile_data(path), Where(path))
    return replace(
        profile,
        source=path,
        lineage=profile_lineage(path),
        target=replace(profile.target, name=profile.name),
    )


def load_waivers(
    profile: str | Sequence[str], waiver_files: Sequence[Path] = (), extra: Sequence[Waiver] = ()
) -> tuple[Waiver, ...]:
    """Shipped waivers (which must say how they were verified), then files, then recipe waivers,
    keeping those that apply to `profile` (a name, or a profile's lineage)."""
    lineage = (profile,) if isinstance(profile, str) else tuple(profile)
    waivers: list[Waiver] = []
    for path in sorted(WAIVERS_DIR.glob("*.toml")):
        waivers.extend(_waivers_from_file(path, require_verified=True))
    for path in waiver_files:
        if not path.is_file():
            raise UserError(f"waiver file {path}: no such file")
        waivers.extend(_waivers_from_file(path, require_verified=False))
    waivers.extend(replace(w, origin=w.origin or "recipe") for w in extra)
    return tuple(w for w in waivers if w.applies_to(lineage))


def _waivers_from_file(path: Path, require_verified: bool) -> list[Waiver]:
    where = Where(path)
    waivers = from_table(WaiverFile, read_toml(path), where).waiver
    for i, waiver in enumerate(waivers):
        if require_verified and not waiver.verified:
            raise (
                where.child("waiver")
                .child(i)
                .child("verified")
                .error("missing; a shipped waiver says how it was shown to run on the target")
            )
    return [replace(w, origin=str(path)) for w in waivers]
