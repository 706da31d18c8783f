"""A process that misbehaves inside a running sandbox, for the checks of its bounds.

`buildkit smoke` runs it as root (`python -m buildkit.smoke.intruder ACTION PID UID GID ...`); it
joins the user and mount namespaces of the payload process PID, becomes UID:GID there (the
payload's own ids) and then does what a payload gone wrong would:

    fill PATH:BOUND...   write into each PATH until the kernel refuses (ENOSPC), at most BOUND bytes
    forks BOUND          fork until the kernel refuses (EAGAIN), at most BOUND children, then let
                         them all exit

Its own RLIMIT_NPROC is raised first, to the host's hard limit: what stops it is the process
ceiling of the sandbox's user namespace, which bwrap created under the recipe's limit. One JSON
line on stdout says what happened. It works for any payload: nothing of it is in the payload image.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
FILL_NAME = ".buildkit-smoke-fill"
CHUNK = 1 << 20
# The mount namespace first, while still root of the host: it belongs to bwrap's outer user
# namespace, over which the payload's nested one (--disable-userns) gives no rights.
NAMESPACES = (("mnt", CLONE_NEWNS), ("user", CLONE_NEWUSER))


def enter(pid: int, uid: int, gid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    os.setgroups([])
    # Both are opened first: once inside the mount namespace, /proc is the sandbox's.
    namespaces = [(name, flag, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY)) for name, flag in NAMESPACES]
    for name, flag, fd in namespaces:
        if libc.setns(fd, flag) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name} of pid {pid}")
        os.close(fd)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.chdir("/")


def fill(targets: list[str]) -> dict[str, Any]:
    results = []
    block = b"\xa5" * CHUNK
    for target in targets:
        path, _, bound = target.rpartition(":")
        written, error = 0, None
        try:
            with open(os.path.join(path, FILL_NAME), "wb", buffering=0) as out:
                while written <= int(bound):
                    written += out.write(block)
        except OSError as exc:
            error = errno.errorcode.get(exc.errno or 0, str(exc))
        results.append({"path": path, "bytes": written, "error": error})
    return {"filled": results}


def lift_process_limit() -> int:
    """The intruder's own RLIMIT_NPROC, raised as far as the host lets root (-1: unlimited)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
    return -1 if hard == resource.RLIM_INFINITY else hard


def forks(bound: int, own_limit: int) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    children: list[int] = []
    error = None
    while len(children) <= bound:
        try:
            child = os.fork()
        except OSError as exc:
            error = errno.errorcode.get(exc.errno or 0, str(exc))
            break
        if child == 0:
            os.close(write_end)
            os.read(read_end, 1)  # held until the parent closes its end
            os._exit(0)
        children.append(child)
    os.close(write_end)
    for child in children:
        os.waitpid(child, 0)
    return {"forked": len(children), "error": error, "own_limit": own_limit}


def main(argv: list[str]) -> int:
    action, pid, uid, gid, *rest = argv
    own_limit = lift_process_limit()
    enter(int(pid), int(uid), int(gid))
    result = fill(rest) if action == "fill" else forks(int(rest[0]), own_limit)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
