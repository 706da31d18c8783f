"""Our scrypt parameters, against libsodium itself (the library minisign uses)."""

from __future__ import annotations

import ctypes
import ctypes.util

from hypothesis import given, settings
from hypothesis import strategies as st

from buildkit.keys import minisign


def _libsodium_stream(password: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    lib = ctypes.CDLL(ctypes.util.find_library("sodium") or "libsodium.so.23")
    assert lib.sodium_init() >= 0
    out = ctypes.create_string_buffer(104)
    fn = lib.crypto_pwhash_scryptsalsa208sha256
    fn.argtypes = [
        ctypes.c_char_p,
        ctypes.c_ulonglong,
        ctypes.c_char_p,
        ctypes.c_ulonglong,
        ctypes.c_char_p,
        ctypes.c_ulonglong,
        ctypes.c_size_t,
    ]
    assert fn(out, 104, password, len(password), salt, opslimit, memlimit) == 0
    return out.raw


@settings(max_examples=20, deadline=None)
@given(opslimit=st.integers(min_value=1, max_value=2**21), memlimit=st.integers(min_value=2**14, max_value=2**23))
def test_scrypt_parameters_match_libsodium(opslimit, memlimit):
    salt = bytes(range(32))
    assert minisign._scrypt_stream(b"pw", salt, opslimit, memlimit, "test key") == _libsodium_stream(
        b"pw", salt, opslimit, memlimit
    )
