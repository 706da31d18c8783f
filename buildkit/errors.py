"""The ways a command ends, mapped to exit codes by the CLI (one table, shown by `buildkit --help`).

UserError (exit 2): bad usage, input or environment. The message is one line that names what is
wrong and where, and how to fix it when that is known. VerificationFailed (exit 1): the inputs are
fine but the artifact violates the profile, or a signature or check does not hold. Any other
exception is a bug in buildkit (exit 3), so that CI can tell "the gate found a violation" from
"the gate crashed".
"""

EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process it terminated

EXIT_CODES: dict[int, str] = {
    0: "success: compatible, built, packaged, signature valid, checks passed",
    EXIT_VIOLATION: "violation: the gate refused it, a signature or a check failed",
    EXIT_USAGE: "bad usage, input or environment (a bad recipe, a missing tool)",
    EXIT_INTERNAL: "internal error (a bug in buildkit); BUILDKIT_DEBUG=1 shows the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGINT); no partial output was kept",
    EXIT_TERMINATED: "terminated (SIGTERM); no partial output was kept",
}


class UserError(Exception):
    """Bad usage, input or environment; exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that the same cleanup runs as for Ctrl-C."""


class VerificationFailed(Exception):
    """The artifact or signature does not pass; exit code 1."""
