"""The v2 token scheme: round trip, denials, and no crash on garbage."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitquorum import tokens
from gitquorum.errors import GitquorumError, PermissionDenied, Unauthenticated

SECRET = b"correct horse battery staple"
NOW = 1_700_000_000.0


def header(token: str) -> str:
    return f"Bearer {token}"


def test_round_trip() -> None:
    token = tokens.v2_token(SECRET, now=NOW)
    tokens.check(header(token), SECRET, now=NOW)
    # Also with the real clock and the ready-made metadata pair.
    key, value = tokens.bearer(SECRET)
    assert key == "authorization"
    tokens.check(value, SECRET)


def test_token_format_matches_gitaly() -> None:
    token = tokens.v2_token(SECRET, now=NOW)
    version, digest, timestamp = token.split(".")
    assert version == "v2"
    assert timestamp == str(int(NOW))
    assert digest == hmac.new(SECRET, timestamp.encode(), hashlib.sha256).hexdigest()


def test_scheme_is_case_insensitive() -> None:
    tokens.check(f"bearer {tokens.v2_token(SECRET, now=NOW)}", SECRET, now=NOW)


def test_wrong_secret_denied() -> None:
    token = tokens.v2_token(b"other secret", now=NOW)
    with pytest.raises(PermissionDenied, match="permission denied"):
        tokens.check(header(token), SECRET, now=NOW)


def test_tampered_timestamp_denied() -> None:
    version, digest, _ = tokens.v2_token(SECRET, now=NOW).split(".")
    with pytest.raises(PermissionDenied):
        tokens.check(header(f"{version}.{digest}.{int(NOW) + 1}"), SECRET, now=NOW)


@pytest.mark.parametrize("value", [None, ""])
def test_missing_token_unauthenticated(value: str | None) -> None:
    with pytest.raises(Unauthenticated, match="authentication required"):
        tokens.check(value, SECRET, now=NOW)


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "token"])
def test_not_a_bearer_token_unauthenticated(value: str) -> None:
    with pytest.raises(Unauthenticated):
        tokens.check(value, SECRET, now=NOW)


@pytest.mark.parametrize("offset", [31.0, -31.0, 3600.0, -NOW])
def test_stale_or_future_timestamp_denied(offset: float) -> None:
    token = tokens.v2_token(SECRET, now=NOW + offset)
    with pytest.raises(PermissionDenied):
        tokens.check(header(token), SECRET, now=NOW)


@pytest.mark.parametrize("offset", [0.0, 29.0, -29.0, 30.0, -30.0])
def test_within_skew_accepted(offset: float) -> None:
    tokens.check(header(tokens.v2_token(SECRET, now=NOW + offset)), SECRET, now=NOW)


def test_custom_skew() -> None:
    token = tokens.v2_token(SECRET, now=NOW - 100)
    tokens.check(header(token), SECRET, skew=120, now=NOW)
    with pytest.raises(PermissionDenied):
        tokens.check(header(token), SECRET, skew=60, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "v1.abc.123",
        "v2.abc",
        "v2.abc.def",
        "v2..",
        "v2.abc.-5",
        "v2.abc.1.5",
        "v2.abc.²",  # str.isdigit() accepts it, int() does not
        "v2.abc." + "\u0661\u0667" + "\u0660" * 8,  # Arabic-Indic digits
        "v2.abc." + "9" * 5000,  # beyond int()'s digit limit
        "v2.abc." + "9" * 400,  # beyond float range
        "v2.é.1700000000",  # compare_digest rejects non-ASCII str
        "v2.\u0000.1700000000",
        "v2." + "a" * 64 + ".1700000000",
    ],
)
def test_malformed_tokens_denied(token: str) -> None:
    with pytest.raises(PermissionDenied):
        tokens.check(header(token), SECRET, now=NOW)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=80),
        st.text(max_size=80).map(lambda t: f"Bearer {t}"),
        st.tuples(st.text(max_size=70), st.text(max_size=25)).map(
            lambda p: f"Bearer v2.{p[0]}.{p[1]}"
        ),
        st.integers(min_value=-(10**30), max_value=10**30).map(
            lambda ts: f"Bearer v2.{'0' * 64}.{ts}"
        ),
    )
)
def test_fuzz_never_crashes(value: str) -> None:
    try:
        tokens.check(value, SECRET, now=NOW)
    except (Unauthenticated, PermissionDenied):
        return
    except GitquorumError as exc:  # pragma: no cover - would be a wrong status
        pytest.fail(f"unexpected status {exc.code} for {value!r}")
    pytest.fail(f"garbage accepted: {value!r}")


def test_default_clock_is_used() -> None:
    tokens.check(header(tokens.v2_token(SECRET)), SECRET)
    with pytest.raises(PermissionDenied):
        tokens.check(header(tokens.v2_token(SECRET, now=time.time() - 3600)), SECRET)
