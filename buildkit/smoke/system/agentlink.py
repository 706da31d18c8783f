"""The host's side of the agent's command loop (guest/agent's `answer`): while the service runs,
the checks that need the guest (the processes under the sandbox's PID 1, an intruder of the
payload's uid) ask the agent on the console and read its answer. With this, the emulated Pi offers
what `buildkit smoke`'s checks of the service and of the sandbox's bounds need (ServiceAccess,
SandboxAccess), and those same checks run on the ARM kernel."""

from __future__ import annotations

import errno
import os
import queue
import time
from dataclasses import dataclass
from typing import Any

from buildkit.smoke.device import PayloadConfig
from buildkit.smoke.probes import SLOW_CLIENTS_PER_SOURCE, SLOW_HOLD_S, SLOW_PROBE_AFTER_S, Requester
from buildkit.smoke.procfs import Proc, descendants, parse_stat
from buildkit.smoke.results import CheckFailed
from buildkit.smoke.slowclients import SlowClientsOutcome, hold_slow_clients
from buildkit.smoke.system.qemu import GUEST_ADDR, Board

ANSWER_BOUND = 120.0  # an intruder filling 32 MiB of tmpfs under TCG on a loaded host takes seconds
# The agent reports errors as the guest's strerror text (dd's, ash's): back to their errno names.
ERRNO_NAMES = {os.strerror(code): name for code, name in errno.errorcode.items()}
SLIRP_SOURCE = "10.0.2.2"


def ask(board: Board, command: str, *args: str) -> dict[str, list[str]]:
    """The agent's answer to `command`: its BKF lines, KEY → the rest of each line."""
    board.send(" ".join((command, *args)))
    facts: dict[str, list[str]] = {}
    deadline = time.monotonic() + ANSWER_BOUND
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = board.console.arrived.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        if line.startswith(f"BKS answered {command}"):
            return facts
        words = line.split(" ", 2)
        if words[0] == "BKF" and len(words) >= 2:
            facts.setdefault(words[1], []).append(words[2] if len(words) > 2 else "")
    raise CheckFailed(f"the agent did not answer {command!r} within {ANSWER_BOUND:.0f}s")


def errno_name(said: str) -> str | None:
    """'ENOSPC' for 'No space left on device'; None for no error, the text itself if unknown."""
    return ERRNO_NAMES.get(said.strip(), said.strip()) if said.strip() else None


@dataclass(frozen=True)
class GuestDevice:
    """The emulated Pi while its service runs: port 80 through slirp, the rest through the agent."""

    board: Board
    config: PayloadConfig
    request: Requester
    secret_values: dict[str, str]
    timeout: float

    def processes(self) -> tuple[int, dict[int, Proc]]:
        """The sandbox's PID 1 (tini) and the guest's process table."""
        facts = ask(self.board, "tree")
        root = "".join(facts.get("tree-root", [])).strip()
        if not root.isdigit():
            raise CheckFailed("the sandbox is not running (no tini pid file in the guest)")
        return int(root), {proc.pid: proc for proc in map(parse_stat, facts.get("tree", []))}

    def sandbox_processes(self) -> list[Proc]:
        root, table = self.processes()
        return descendants(root, table)

    def sandbox_tasks(self) -> int:
        root, table = self.processes()
        return sum(proc.threads for proc in (table.get(root), *descendants(root, table)) if proc is not None)

    def hold_slow_clients(self, path: str, connections: int, answer_within: float) -> tuple[SlowClientsOutcome, str]:
        # Through slirp every connection from the host comes from one address, and the firewall
        # holds a few dozen per source: as many as `buildkit smoke` holds from each of its sources.
        held = min(connections, SLOW_CLIENTS_PER_SOURCE)
        outcome = hold_slow_clients(
            "127.0.0.1",
            self.board.http_port,
            path,
            held,
            probe_after=SLOW_PROBE_AFTER_S,
            hold=SLOW_HOLD_S,
            answer_within=answer_within,
        )
        return outcome, (
            f"of {held} slow connections accepted by slirp for {GUEST_ADDR}:80 (the recipe asks {connections}: "
            f"through slirp all come from {SLIRP_SOURCE}, one source, and the firewall caps each source)"
        )

    def intrude(self, action: str, *args: str) -> dict[str, Any]:
        facts = ask(self.board, action, *args)
        if action == "fill":
            filled = [line.split(" ", 2) + [""] for line in facts.get("fill", [])]
            if len(filled) != len(args):
                raise CheckFailed("the sandbox is not running: the agent found no payload under tini")
            return {"filled": [{"path": p, "bytes": int(n), "error": errno_name(e)} for p, n, e, *_ in filled]}
        words = "".join(facts.get("forks", [])).split(" ", 2)
        if len(words) < 2:
            raise CheckFailed("the sandbox is not running: the agent found no payload under tini")
        own_limit = int(words[1]) if words[1].isdigit() else -1
        return {
            "forked": int(words[0]),
            "error": errno_name(words[2] if len(words) > 2 else ""),
            "own_limit": own_limit,
        }

    def remove_fill(self) -> None:
        ask(self.board, "unfill", *(path for path, _ in self.config.tmpfs))

    def payload_output(self) -> str:
        return (
            " | ".join(line.split(": ", 1)[-1] for line in ask(self.board, "log").get("log-tail", [])) or "(no output)"
        )
