# SPDX-License-Identifier: Apache-2.0
"""CRC-32C of state chunks (exports checked, imports sent): the C
implementation from google-crc32c when installed, else pure Python."""
from __future__ import annotations

import time


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c_python(data: bytes, crc: int = 0) -> int:
    """CRC-32C of `data`; of what came before and `data` given `crc`, the
    CRC-32C of what came before."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # the C implementation when installed (pip: google-crc32c)
    import google_crc32c as _google_crc32c

    def _crc32c(data: bytes) -> int:
        return _google_crc32c.value(data)
    _C_CRC = True
except ImportError:  # ~10 MB/s in pure Python
    _crc32c = _crc32c_python
    _C_CRC = False


def _crc32c_in_thread(data: bytes) -> int:
    """_crc32c(data), computed in a thread beside an event loop. In pure
    Python: 16 KiB at a time, handing the GIL over in between, else the
    loop's thread waits up to the switch interval (5 ms) each time it takes
    the GIL back, which it does many times a step."""
    if _C_CRC:
        return _crc32c(data)
    crc = 0
    view = memoryview(data)
    for i in range(0, len(view), 16384):
        crc = _crc32c_python(view[i:i + 16384], crc)
        time.sleep(0)
    return crc
