"""PiSec buildkit: build, gate, sign and package payloads for the Raspberry Pi 1B (ARMv6KZ)."""

__version__ = "0.1.0"
