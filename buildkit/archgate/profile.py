"""Target profiles and waivers: all gate policy is data in verify/, loaded into frozen dataclasses.

A profile (verify/profiles/<name>.toml) says what a target CPU runs: the ELF header it accepts, an
allow-list per build-attribute tag (by the tag's name in the ARM ABI addenda), the GOARM levels, the
code-scan rules and the dynamic loaders with their float ABIs. A new board is a new file, not code.

A waiver (`[[waiver]]` in verify/waivers/*.toml, in a file given on the command line, or in a
recipe's [gate]) turns matching errors into `waived` findings that stay in the report.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

from elftools.elf.enums import ENUM_ATTR_TAG_ARM

from buildkit.archgate.coderules import CodeRules
from buildkit.errors import UserError
from buildkit.recipe import Waiver as RecipeWaiver


def _verify_dir() -> Path:
    """verify/ ships inside an installed package as buildkit/verify (pyproject's package-dir); in a
    source checkout it is the repository's verify/."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "verify"
    return installed if installed.is_dir() else package.parent / "verify"


VERIFY_DIR = _verify_dir()
PROFILES_DIR = VERIFY_DIR / "profiles"
WAIVERS_DIR = VERIFY_DIR / "waivers"
FLOAT_ABIS = ("soft", "hard")


@dataclass(frozen=True)
class HeaderRules:
    elf_class: int
    endian: str                 # "little" | "big"
    machine: str                # pyelftools e_machine name, e.g. "EM_ARM"
    eabi_versions: frozenset[int]
    eabi0_relocatable: bool     # EABI version 0 in an ET_REL object is a warning instead of a violation
    be8: bool


@dataclass(frozen=True)
class AttributeRule:
    name: str                   # as in the ARM ABI addenda, e.g. "Tag_CPU_arch"
    allow: frozenset[int]
    warn: frozenset[int]

    @property
    def key(self) -> str:
        """The tag as pyelftools names it ("TAG_CPU_ARCH")."""
        return self.name.upper()

    @property
    def rule_id(self) -> str:
        return "attr." + self.name[len("Tag_"):].lower()


@dataclass(frozen=True)
class Interpreter:
    path: str
    float_abi: str              # "soft" | "hard"


@dataclass(frozen=True)
class ClosureRules:
    interpreters: tuple[Interpreter, ...]
    lib_dirs: tuple[str, ...]

    def interpreter(self, path: str) -> Interpreter | None:
        return next((i for i in self.interpreters if i.path == path), None)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: Path
    header: HeaderRules
    attributes: tuple[AttributeRule, ...]
    goarm: frozenset[int]
    code: CodeRules
    closure: ClosureRules
    hints: dict[str, str]

    def hint(self, rule: str, in_wheel: bool = False) -> str:
        """The most specific hint: for an object in a wheel the "wheel:" entries first, then the rule
        id itself, then its family ("attr.*")."""
        family = rule.split(".", 1)[0] + ".*"
        keys = [rule, family]
        if in_wheel:
            keys = [f"wheel:{rule}", f"wheel:{family}", *keys]
        return next((self.hints[k] for k in keys if k in self.hints), "")


@dataclass(frozen=True)
class Waiver:
    id: str
    rule: str                   # fnmatch glob over rule ids
    reason: str
    path: str = "*"             # fnmatch glob over the object's path inside its artifact
    symbol: str = "*"           # fnmatch glob over a code hit's enclosing symbol
    verified: str = ""
    profiles: tuple[str, ...] = ()
    origin: str = ""            # the file or recipe it came from

    def applies_to(self, profile: str) -> bool:
        return not self.profiles or profile in self.profiles

    def matches(self, rule: str, path: str, symbol: str | None) -> bool:
        if not fnmatch.fnmatchcase(rule, self.rule) or not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.symbol == "*":
            return True
        return symbol is not None and fnmatch.fnmatchcase(symbol, self.symbol)


def load_profile(name_or_file: str) -> Profile:
    """A profile by name (verify/profiles/<name>.toml) or by the path of a TOML file."""
    path = _profile_path(name_or_file)
    data = _read_toml(path)
    table = _Table(data, path, "")
    profile = Profile(
        name=table.sub("profile").string("name"),
        description=table.sub("profile").string("description", ""),
        source=path,
        header=_header_rules(table.sub("header")),
        attributes=_attribute_rules(table.sub("attributes")),
        goarm=_goarm_levels(table.sub("go")),
        code=_code_rules(table),
        closure=_closure_rules(table.sub("closure")),
        hints={k: table.sub("hints").string(k) for k in table.sub("hints").keys()},
    )
    table.reject_unknown({"profile", "header", "attributes", "go", "code", "closure", "hints"})
    return profile


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_waivers(profile: str, waiver_files: Sequence[Path] = (),
                 extra: Sequence[RecipeWaiver] = ()) -> tuple[Waiver, ...]:
    """Shipped waivers (which must say how they were verified), then files, then recipe waivers,
    keeping those that apply to `profile`."""
    waivers: list[Waiver] = []
    for path in sorted(WAIVERS_DIR.glob("*.toml")):
        waivers.extend(_waivers_from_file(path, require_verified=True))
    for path in waiver_files:
        if not path.is_file():
            raise UserError(f"waiver file {path}: no such file")
        waivers.extend(_waivers_from_file(path, require_verified=False))
    waivers.extend(Waiver(id=w.id, rule=w.rule, reason=w.reason, path=w.path, symbol=w.symbol, origin="recipe")
                   for w in extra)
    return tuple(w for w in waivers if w.applies_to(profile))


def _profile_path(name_or_file: str) -> Path:
    if name_or_file.endswith(".toml") or "/" in name_or_file:
        path = Path(name_or_file)
        if not path.is_file():
            raise UserError(f"profile file {path}: no such file")
        return path
    path = PROFILES_DIR / f"{name_or_file}.toml"
    if not path.is_file():
        known = ", ".join(available_profiles()) or "none"
        raise UserError(f"profile {name_or_file!r}: unknown; use one of: {known}, or the path of a TOML file")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None


class _Table:
    """Typed access to one TOML table with errors that name the file and the dotted key."""

    def __init__(self, data: Any, path: Path, key: str) -> None:
        if not isinstance(data, dict):
            raise UserError(f"{path}: {key or '(top level)'}: expected a table")
        self.data, self.path, self.key = data, path, key

    def _qualified(self, key: str) -> str:
        return f"{self.key}.{key}" if self.key else key

    def _where(self, key: str) -> str:
        return f"{self.path}: {self._qualified(key)}"

    def keys(self) -> list[str]:
        return list(self.data)

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise UserError(f"{self._where(key)}: missing; expected {what}")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise UserError(f"{self._where(key)}: expected {what}, got {value!r}")
        return value

    def sub(self, key: str) -> _Table:
        return _Table(self._get(key, {}, dict, "a table"), self.path, self._qualified(key))

    def string(self, key: str, default: Any = None) -> str:
        return self._get(key, _REQUIRED if default is None else default, str, "a string")

    def integer(self, key: str) -> int:
        return self._get(key, _REQUIRED, int, "an integer")

    def boolean(self, key: str, default: Any = None) -> bool:
        return self._get(key, _REQUIRED if default is None else default, bool, "true or false")

    def integers(self, key: str, default: Any = None) -> list[int]:
        return self._list(key, default, int, "integers")

    def strings(self, key: str, default: Any = None) -> list[str]:
        return self._list(key, default, str, "strings")

    def tables(self, key: str) -> list[_Table]:
        items = self._get(key, _REQUIRED, list, "an array of tables")
        return [_Table(item, self.path, f"{self._qualified(key)}[{i}]") for i, item in enumerate(items)]

    def _list(self, key: str, default: Any, kind: type, what: str) -> list:
        items = self._get(key, _REQUIRED if default is None else default, list, f"an array of {what}")
        if any(not isinstance(i, kind) or isinstance(i, bool) for i in items):
            raise UserError(f"{self._where(key)}: expected an array of {what}, got {items!r}")
        return items

    def reject_unknown(self, known: set[str]) -> None:
        unknown = sorted(set(self.data) - known)
        if unknown:
            raise UserError(f"{self._where(unknown[0])}: unknown key; expected one of: {', '.join(sorted(known))}")


_REQUIRED = object()
_HEADER_KEYS = {"class", "endian", "machine", "eabi_versions", "eabi0_relocatable", "be8"}


def _header_rules(table: _Table) -> HeaderRules:
    table.reject_unknown(_HEADER_KEYS)
    endian = table.string("endian")
    if endian not in ("little", "big"):
        raise UserError(f"{table.path}: header.endian: expected \"little\" or \"big\", got {endian!r}")
    return HeaderRules(elf_class=table.integer("class"), endian=endian, machine=table.string("machine"),
                       eabi_versions=frozenset(table.integers("eabi_versions")),
                       eabi0_relocatable=table.boolean("eabi0_relocatable", False), be8=table.boolean("be8", False))


def _attribute_rules(table: _Table) -> tuple[AttributeRule, ...]:
    rules = []
    for name in table.keys():
        if not name.startswith("Tag_") or name.upper() not in ENUM_ATTR_TAG_ARM:
            raise UserError(f"{table.path}: attributes.{name}: not an ARM build attribute tag name "
                            f"(expected a name like Tag_CPU_arch from the ARM ABI addenda)")
        rule = table.sub(name)
        rule.reject_unknown({"allow", "warn"})
        rules.append(AttributeRule(name=name, allow=frozenset(rule.integers("allow")),
                                   warn=frozenset(rule.integers("warn", []))))
    return tuple(rules)


def _goarm_levels(table: _Table) -> frozenset[int]:
    table.reject_unknown({"goarm"})
    return frozenset(table.integers("goarm"))


def _code_rules(table: _Table) -> CodeRules:
    try:
        return CodeRules.from_table(table.sub("code").data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{table.path}: code: {exc}") from None


def _closure_rules(table: _Table) -> ClosureRules:
    table.reject_unknown({"interpreters", "lib_dirs"})
    interpreters = []
    for item in table.tables("interpreters"):
        item.reject_unknown({"path", "float_abi"})
        abi = item.string("float_abi")
        if abi not in FLOAT_ABIS:
            raise UserError(f"{item.path}: {item.key}.float_abi: expected one of {FLOAT_ABIS}, got {abi!r}")
        interpreters.append(Interpreter(path=item.string("path"), float_abi=abi))
    return ClosureRules(interpreters=tuple(interpreters), lib_dirs=tuple(table.strings("lib_dirs")))


_WAIVER_KEYS = {"id", "rule", "reason", "path", "symbol", "verified", "profiles"}


def _waivers_from_file(path: Path, require_verified: bool) -> list[Waiver]:
    table = _Table(_read_toml(path), path, "")
    table.reject_unknown({"waiver"})
    waivers = []
    for item in table.tables("waiver") if table.has("waiver") else []:
        item.reject_unknown(_WAIVER_KEYS)
        verified = item.string("verified", "")
        if require_verified and not verified:
            raise UserError(f"{path}: {item.key}.verified: missing; a shipped waiver says how it was shown "
                            f"to run on the target")
        waivers.append(Waiver(id=item.string("id"), rule=item.string("rule"), reason=item.string("reason"),
                              path=item.string("path", "*"), symbol=item.string("symbol", "*"), verified=verified,
                              profiles=tuple(item.strings("profiles", [])), origin=str(path)))
    return waivers
