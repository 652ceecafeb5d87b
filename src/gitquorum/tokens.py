"""The v2 token scheme: ``authorization: Bearer v2.<hex hmac>.<unix seconds>``.

The HMAC-SHA256 is keyed with the shared secret and taken over the decimal
timestamp, so a token proves knowledge of the secret and expires with the
allowed clock skew.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from gitquorum.errors import PermissionDenied, Unauthenticated

DEFAULT_SKEW = 30.0
# Unix seconds fit in 11 digits for millennia; anything longer is garbage.
_MAX_TIMESTAMP_DIGITS = 20


def v2_token(secret: bytes, now: float | None = None) -> str:
    timestamp = str(int(time.time() if now is None else now))
    digest = hmac.new(secret, timestamp.encode(), hashlib.sha256).hexdigest()
    return f"v2.{digest}.{timestamp}"


def bearer(secret: bytes) -> tuple[str, str]:
    return ("authorization", f"Bearer {v2_token(secret)}")


def check(
    header: str | None, secret: bytes, skew: float = DEFAULT_SKEW, now: float | None = None
) -> None:
    """Raise Unauthenticated (no token) or PermissionDenied (wrong or stale token)."""
    if not header:
        raise Unauthenticated("authentication required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("authentication required: expected a Bearer token")
    parts = token.split(".")
    # ASCII digits only and a bounded length: str.isdigit() also accepts
    # characters such as "²" that int() rejects, and a huge number would
    # overflow the float arithmetic below; either must be a denial, not a crash.
    if (
        len(parts) != 3
        or parts[0] != "v2"
        or not (parts[2].isascii() and parts[2].isdigit())
        or len(parts[2]) > _MAX_TIMESTAMP_DIGITS
    ):
        raise PermissionDenied("permission denied")
    _version, digest, timestamp = parts
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > skew:
        raise PermissionDenied("permission denied")
    expected = hmac.new(secret, timestamp.encode(), hashlib.sha256).hexdigest()
    # compare_digest refuses non-ASCII str operands with TypeError; bytes always compare.
    if not hmac.compare_digest(expected.encode(), digest.encode("utf-8", "replace")):
        raise PermissionDenied("permission denied")
