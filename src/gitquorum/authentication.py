"""Who may call a gRPC server: the v2 token (``gitquorum.tokens``) checked at its edge.

Two secrets, so that clients cannot bypass the proxy:

* the **client secret** (proxy ``auth.token_file`` or ``$GITQUORUM_TOKEN``):
  clients -> proxy;
* the **node secret** (proxy ``auth.node_token_file``, node ``auth.token_file``
  or ``$GITQUORUM_NODE_TOKEN``): proxy -> nodes and node -> node (replication).

Votes (node -> proxy RefTransaction) carry neither: each transaction has its
own random secret that the proxy hands to the nodes it involves, and the
RefTransaction service checks it itself. The standard health service is open
on every server: it says only whether the process serves, and load balancers,
orchestrators and the proxies' own health checks call it without a token
(with mutual TLS, they still need a client certificate).

A secret file holds one secret per line (surrounding blanks and empty lines
ignored). The first one signs outgoing tokens; every one is accepted, which
lets a secret be rotated without downtime (docs/security.md). A secret comes
from a file or the environment, never from the command line (other users see
argv in ``ps``), and is never logged: rejections are logged with the method,
the reason and the role of the server only (not even a hash of a
secret: a weak one could be guessed from it).

A missing, malformed, stale (outside the clock skew) or wrongly signed token
is UNAUTHENTICATED, with a message that says nothing about the request (no
repository, no storage): the check runs before any handler looks at it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from gitquorum import log, tokens
from gitquorum.errors import ConfigError, GitquorumError, Unauthenticated

TOKEN_ENV = "GITQUORUM_TOKEN"
NODE_TOKEN_ENV = "GITQUORUM_NODE_TOKEN"
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
# Authenticated by the per-transaction secret (proxy/transaction_service.py).
VOTE_METHODS = frozenset(
    {"/gitaly.RefTransaction/VoteTransaction", "/gitaly.RefTransaction/StopTransaction"}
)
MISSING = "authentication required"
FAILED = "authentication failed"

logger = log.get("gitquorum.auth")


def parse_secrets(data: bytes) -> tuple[bytes, ...]:
    """Secrets of a file or variable: one per line, blanks around them dropped."""
    return tuple(line.strip() for line in data.splitlines() if line.strip())


def load_secrets(
    path: str, env: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[bytes, ...]:
    """The secrets in ``path``, or else in the environment variable ``env``.

    Empty tuple: neither is set, authentication is off. A named file that is
    unreadable or holds nothing is a ConfigError: silently running without
    authentication would be worse than not starting.
    """
    if path:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError([f"token file {path}: cannot read: {exc.strerror}"]) from exc
        found = parse_secrets(data)
        if not found:
            raise ConfigError([f"token file {path}: holds no secret"])
        return found
    source = os.environ if environ is None else environ
    value = source.get(env, "") if env else ""
    found = parse_secrets(value.encode())
    if env and env in source and not found:
        raise ConfigError([f"${env} is set but empty"])
    return found


def take_secrets(path: str, env: str) -> tuple[bytes, ...]:
    """``load_secrets`` for a server process, which then drops the variable so
    the processes it starts (git, hooks) do not inherit the secret."""
    found = load_secrets(path, env)
    os.environ.pop(env, None)
    return found


def signing_secret(secrets: Sequence[bytes]) -> bytes | None:
    """The secret outgoing tokens are signed with: the first one."""
    return secrets[0] if secrets else None


def verify(header: str | None, secrets: Sequence[bytes], skew: float = tokens.DEFAULT_SKEW) -> None:
    """Pass when ``header`` is a valid v2 token of any of ``secrets``; raise otherwise."""
    error: GitquorumError | None = None
    for secret in secrets:
        try:
            tokens.check(header, secret, skew)
            return
        except GitquorumError as exc:
            error = exc
    # No secret at all refuses everything: fail closed.
    raise error or Unauthenticated("no secret to check tokens against")


def rejection_reason(header: str | None, skew: float = tokens.DEFAULT_SKEW) -> str:
    """Why a token was refused, for the server's log (never for the client)."""
    if not header:
        return "no token"
    scheme, _, token = header.partition(" ")
    parts = token.split(".")
    if scheme.lower() != "bearer" or len(parts) != 3 or parts[0] != "v2":
        return "not a v2 bearer token"
    if not (parts[2].isascii() and parts[2].isdigit()) or len(parts[2]) > 20:
        return "malformed timestamp"
    if abs(time.time() - int(parts[2])) > skew:
        return "timestamp outside the allowed clock skew"
    return "wrong signature"


def _authorization(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only refuses.

    No request deserializer: a refused request is never parsed, so nothing
    the client sent can shape the answer.
    """

    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort always raises; this makes a generator

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.stream_stream_rpc_method_handler(streaming)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without a valid v2 token, except ``exempt`` methods.

    Put it first in the server's interceptors, so a refused call reaches no
    other interceptor's logging or any handler.
    """

    def __init__(
        self,
        secrets: Sequence[bytes],
        exempt: Collection[str] = HEALTH_METHODS,
        skew: float = tokens.DEFAULT_SKEW,
        *,
        role: str = "server",
    ) -> None:
        if not secrets:
            raise ValueError("an authenticating server needs at least one secret")
        self.secrets = tuple(secrets)
        self.exempt = frozenset(exempt)
        self.skew = skew
        self.role = role

    def replace_secrets(self, secrets: Sequence[bytes]) -> None:
        """Check calls against ``secrets`` from now on (a reload, e.g. on SIGHUP).

        One assignment of an immutable tuple: a call sees the old set or the
        new one, never a mix.
        """
        if not secrets:
            raise ValueError("an authenticating server needs at least one secret")
        self.secrets = tuple(secrets)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method in self.exempt:
            return await continuation(handler_call_details)
        header = _authorization(handler_call_details.invocation_metadata)
        try:
            verify(header, self.secrets, self.skew)
        except GitquorumError:
            handler = await continuation(handler_call_details)
            if handler is None:
                # Unknown method: UNIMPLEMENTED says nothing about repositories.
                return handler
            metadata = handler_call_details.invocation_metadata
            logger.warning(
                "call refused: not authenticated",
                extra=log.fields(
                    method=method,
                    reason=rejection_reason(header, self.skew),
                    role=self.role,
                    # The caller's id, when it sent one, ties this to its own logs.
                    correlation_id=log.correlation_from_metadata(metadata),
                ),
            )
            return _denied(handler, FAILED if header else MISSING)
        return await continuation(handler_call_details)
