"""hello-py: PiSec's reference Python payload, the same service as hello-go.

Business endpoints under /api/, and under /debug/logs a bounded, redacted window of JSON-lines
request records that only the holder of a bearer token (read from a file at start, never shipped in
the payload) can read.
"""

VERSION = "1.0.0"
