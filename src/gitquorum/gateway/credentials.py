"""Who may use the gateway: the secrets of its token file.

One credential per line, ``SECRET`` (fetch and push) or ``SECRET read-only``
(fetch only); blank lines and ``#`` comments are ignored. A client proves it
knows a secret with HTTP Basic auth (any user name, the secret as password:
what git's credential helpers store), with ``Authorization: Bearer SECRET``,
or with a v2 token signed by the secret (``gitquorum.tokens``).

No or wrong credentials are a 401 with a Basic challenge, so git asks its
credential helper (and forgets a stored password that failed); a read-only
credential on a push is a 403.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from pathlib import Path

from gitquorum import tokens
from gitquorum.errors import GitquorumError, PermissionDenied, Unauthenticated

REALM = "gitquorum"
CHALLENGE = f'Basic realm="{REALM}"'
READ_ONLY = "read-only"


@dataclass(frozen=True)
class Identity:
    """An authenticated client; ``username`` is empty for bearer tokens."""

    username: str
    can_push: bool


@dataclass(frozen=True)
class _Secret:
    value: bytes
    can_push: bool


class Credentials:
    def __init__(self, secrets: list[tuple[bytes, bool]]) -> None:
        if not secrets:
            raise ValueError("no secrets")
        self._secrets = [_Secret(value, can_push) for value, can_push in secrets]

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        """Parse a token file; ValueError names the offending line."""
        secrets: list[tuple[bytes, bool]] = []
        text = Path(path).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) > 2 or (len(words) == 2 and words[1] != READ_ONLY):
                raise ValueError(f"{path}:{number}: expected 'SECRET' or 'SECRET {READ_ONLY}'")
            secrets.append((words[0].encode(), len(words) == 1))
        if not secrets:
            raise ValueError(f"{path}: no secrets")
        return cls(secrets)

    def authenticate(self, header: str | None) -> Identity:
        """The identity an Authorization header proves, or Unauthenticated."""
        if not header:
            raise Unauthenticated("authentication required")
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            username, password = _basic(value)
            secret = self._match(password)
            if secret is not None:
                return Identity(username, secret.can_push)
        elif scheme.lower() == "bearer" and value:
            secret = self._match(value.encode()) or self._match_v2(header)
            if secret is not None:
                return Identity("", secret.can_push)
        raise Unauthenticated("wrong credentials")

    def authorize(self, header: str | None, push: bool) -> Identity:
        identity = self.authenticate(header)
        if push and not identity.can_push:
            raise PermissionDenied("this credential may fetch but not push")
        return identity

    def _match(self, candidate: bytes) -> _Secret | None:
        found = None
        # Compare against every secret so timing does not reveal which one matched.
        for secret in self._secrets:
            if hmac.compare_digest(secret.value, candidate) and found is None:
                found = secret
        return found

    def _match_v2(self, header: str) -> _Secret | None:
        for secret in self._secrets:
            try:
                tokens.check(header, secret.value)
            except GitquorumError:
                continue
            return secret
        return None


def _basic(value: str) -> tuple[str, bytes]:
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Unauthenticated("malformed Basic credentials") from None
    username, sep, password = decoded.partition(b":")
    if not sep:
        raise Unauthenticated("malformed Basic credentials")
    return username.decode("utf-8", "replace"), password
