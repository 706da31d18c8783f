"""Processes and mounts as the host sees them, read from /proc."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    threads: int = 1


@dataclass(frozen=True)
class Mount:
    point: str
    options: frozenset[str]  # the mount's own options (ro/rw, nosuid...), not the file system's
    fstype: str
    super_options: frozenset[str] = frozenset()  # the file system's (a tmpfs's size=...)


def process_table() -> dict[int, Proc]:
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        table[int(entry.name)] = parse_stat(stat)
    return table


def parse_stat(stat: str) -> Proc:
    """A /proc/PID/stat line (also one read inside an emulated device): the comm may hold spaces
    and parentheses, so the fields are counted from its last ")"."""
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return Proc(int(stat.split(" ", 1)[0]), int(fields[1]), fields[0], comm, int(fields[17]))


def descendants(root_pid: int, table: dict[int, Proc] | None = None) -> list[Proc]:
    table = process_table() if table is None else table
    children: dict[int, list[Proc]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc)
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


def inside_id(pid: int, map_name: str, host_id: int) -> int:
    """The id that `host_id` is inside the user namespace of `pid` (uid_map or gid_map), -1 if unmapped."""
    for line in Path(f"/proc/{pid}/{map_name}").read_text().splitlines():
        inside, outside, count = map(int, line.split())
        if outside <= host_id < outside + count:
            return inside + host_id - outside
    return -1


def mounts(pid: int | str = "self") -> list[Mount]:
    """The mount table as process `pid` sees it, in mount order (mountinfo: point, options, and the
    file system type and its options after the "-" separator)."""
    return parse_mountinfo(Path(f"/proc/{pid}/mountinfo").read_text())


def parse_mountinfo(text: str) -> list[Mount]:
    """The mount table of a /proc/PID/mountinfo text (also one read inside an emulated device)."""
    table = []
    for line in text.splitlines():
        fields = line.split()
        separator = fields.index("-")
        table.append(
            Mount(
                fields[4].encode().decode("unicode_escape"),
                frozenset(fields[5].split(",")),
                fields[separator + 1],
                frozenset(fields[separator + 3].split(",")) if len(fields) > separator + 3 else frozenset(),
            )
        )
    return table


def mounts_below(root: Path) -> list[Path]:
    prefix = str(root).rstrip("/") + "/"
    return [Path(mount.point) for mount in mounts() if mount.point.startswith(prefix)]
