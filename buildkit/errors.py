"""The two ways a command fails, mapped to exit codes by the CLI.

UserError (exit 2): bad usage, input or environment. The message is one line that names what is
wrong and where, and how to fix it when that is known. VerificationFailed (exit 1): the inputs are
fine but the artifact violates the profile, or a signature or check does not hold.
"""

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2


class UserError(Exception):
    """Bad usage, input or environment; exit code 2."""


class VerificationFailed(Exception):
    """The artifact or signature does not pass; exit code 1."""
