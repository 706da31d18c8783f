"""qemu-system-arm as a Raspberry Pi 1 A+ (ARM1176, 512 MiB): its console read line by line (and
saved), its network reached through slirp's host forwards, and the process stopped by its own pid
whatever happens."""

from __future__ import annotations

import contextlib
import lzma
import queue
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from buildkit.errors import UserError
from buildkit.fsutil import write_bytes_atomic
from buildkit.smoke.results import last_line
from buildkit.toolchain import require_tool

MACHINE = "raspi1ap"
DTB = "bcm2835-rpi-a-plus.dtb"
PM_NODE = "/soc/watchdog@7e100000"
# rng_core.default_quality: Debian's kernel credits a hardware RNG with no entropy by default, so
# the CRNG would wait for jitter entropy, which takes minutes of emulated time; credited, the
# emulated BCM2835 RNG (backed by the host's getrandom) seeds it, as the entropy gate expects.
# quiet loglevel=1: every console byte is an emulated UART write; the log stays in dmesg.
# cryptomgr.notests: the self-tests of the kernel's built-in crypto algorithms run at late_initcall
# and take seconds of emulated time; they test QEMU's CPU emulation, not the card.
CMDLINE = "console=ttyAMA0 rdinit=/init panic=-1 quiet loglevel=1 rng_core.default_quality=1024 cryptomgr.notests=1"
GUEST_ADDR = "10.0.2.15"
XZ_MAGIC = b"\xfd7zXZ\x00"
TEXT_OFFSET = 0x8000  # where a 32-bit ARM kernel image runs, from the start of RAM (0 on the Pi)


def patched_dtb(dtb_dir: Path, dest: Path) -> Path:
    """The A+ device tree without the PM node's "asb" registers: QEMU 7.2 emulates no BCM2835 ASB,
    and bcm2835_power_probe faults (a kernel panic) on it. A real Pi needs no patch."""
    dest.write_bytes((dtb_dir / DTB).read_bytes())
    fdtput = str(require_tool("fdtput"))
    for argv in (
        ["-t", "x", str(dest), PM_NODE, "reg", "0x7e100000", "0x114"],
        ["-t", "s", str(dest), PM_NODE, "reg-names", "pm"],
    ):
        done = subprocess.run([fdtput, *argv], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"fdtput {' '.join(argv[3:5])} on {DTB}: {last_line(done.stderr)}")
    return dest


def uncompressed_kernel(zimage: Path, dest: Path) -> Path:
    """The kernel of `zimage` decompressed on the host, as a U-Boot image that QEMU loads at its
    run address: the zImage's own XZ decompressor takes seconds of emulated time on every boot.
    The kernel is the same bytes; a Pi's firmware (or U-Boot) boots an uncompressed kernel too."""
    if dest.is_file():
        return dest
    data = zimage.read_bytes()
    start = -1
    while (start := data.find(XZ_MAGIC, start + 1)) >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            image = decompressor.decompress(data[start:])
        except lzma.LZMAError:
            continue  # the magic bytes inside the decompressor's own code
        if decompressor.eof:
            return write_bytes_atomic(dest, uimage(image, TEXT_OFFSET))
    raise UserError(f"{zimage}: no XZ-compressed kernel inside (is it a zImage?)")


def uimage(image: bytes, address: int) -> bytes:
    """A legacy U-Boot header (Linux, ARM, kernel, uncompressed, loaded and entered at `address`)."""
    fields = (0x27051956, 0, 0, len(image), address, address, zlib.crc32(image), 5, 2, 2, 0, b"Linux")
    header = struct.pack(">IIIIIIIBBBB32s", *fields)
    return header[:4] + struct.pack(">I", zlib.crc32(header)) + header[8:] + image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Console:
    """The guest's console: every line, in order, as it arrives."""

    log: Path
    lines: list[str] = field(default_factory=list)
    arrived: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def read(self, stream: object) -> None:
        """Each line to `log`, prefixed with the host's seconds since qemu started."""
        started = time.monotonic()
        with self.log.open("w", errors="replace") as out:
            for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
                line = raw.decode(errors="replace").rstrip("\r\n")
                out.write(f"[{time.monotonic() - started:7.2f}] {line}\n")
                out.flush()
                self.lines.append(line)
                self.arrived.put(line)
        self.arrived.put(None)

    def wait_for(self, prefixes: tuple[str, ...], deadline: float) -> str | None:
        """The first new line that starts with one of `prefixes`; None at the deadline or at the end."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.arrived.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            if line.startswith(prefixes):
                return line
        return None


@dataclass(frozen=True)
class Board:
    process: subprocess.Popen[bytes]
    console: Console
    http_port: int  # the host's port forwarded to the guest's 80
    service_port: int  # the host's port forwarded to the guest's service port
    started: float

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()


@contextlib.contextmanager
def boot(kernel: Path, dtb: Path, initrd: Path, card: Path, guest_service_port: int, scratch: Path) -> Iterator[Board]:
    http_port, service_port = free_port(), free_port()
    forwards = f"hostfwd=tcp:127.0.0.1:{http_port}-:80,hostfwd=tcp:127.0.0.1:{service_port}-:{guest_service_port}"
    argv = [
        str(require_tool("qemu-system-arm")),
        "-M", MACHINE,
        # Guest time from instructions run, not the host's clock: Linux arms the BCM2835 timer at
        # "counter + a few us", and QEMU's model waits a whole 32-bit wrap (71 min) for a compare
        # already past, so a host that descheduled qemu between the two left the guest without
        # timer interrupts (boots hung at a sleep under load). Counted time cannot pass in between.
        "-icount", "shift=auto,sleep=on",
        "-kernel", str(uncompressed_kernel(kernel, kernel.with_name(f"{kernel.name}.uimage"))),
        "-dtb", str(dtb),
        "-initrd", str(initrd),
        "-append", CMDLINE,
        "-drive", f"if=sd,format=raw,file={card}",
        "-display", "none",
        "-monitor", "none",
        "-serial", "stdio",
        "-no-reboot",
        "-netdev", f"user,id=n0,restrict=on,{forwards}",
        "-device", "usb-net,netdev=n0",
    ]  # fmt: skip
    console = Console(scratch / "console.log")
    with (scratch / "qemu.err").open("wb") as err:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    try:
        threading.Thread(target=console.read, args=(process.stdout,), daemon=True).start()
        yield Board(process, console, http_port, service_port, time.monotonic())
    finally:
        process.kill()
        process.wait()
