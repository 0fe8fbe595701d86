"""Make oscrypto 1.3.0 (used by signify) load against OpenSSL 3.x with a two-digit patch release.

oscrypto reads the libcrypto version string with the regex ``\\b(\\d\\.\\d\\.\\d[a-z]*)\\b``, which does
not match e.g. "OpenSSL 3.0.17", and then refuses to load ("Error detecting the version of libcrypto").
oscrypto only uses the major and minor numbers (to choose between the OpenSSL 1.x and 3.x APIs), so
while it is being imported we report the patch release as 0. The patch is undone right after the import.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import cffi  # type: ignore[import-untyped]

_TWO_DIGIT_PATCH = re.compile(r"\b(\d+\.\d+\.)\d{2,}\b")


def ensure_oscrypto_loads() -> None:
    """Import oscrypto's OpenSSL backend once, working around its version detection bug."""
    if "oscrypto.asymmetric" in sys.modules:
        return
    original_string = cffi.FFI.string

    def parseable_version_string(self: cffi.FFI, cdata: Any, *args: Any) -> Any:
        value = original_string(self, cdata, *args)
        if isinstance(value, bytes) and value.startswith(b"OpenSSL "):
            return _TWO_DIGIT_PATCH.sub(r"\g<1>0", value.decode("ascii", "replace")).encode()
        return value

    cffi.FFI.string = parseable_version_string
    try:
        import oscrypto.asymmetric  # noqa: F401  (loads and caches the OpenSSL backend)
    finally:
        cffi.FFI.string = original_string
