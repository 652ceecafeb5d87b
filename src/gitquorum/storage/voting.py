"""Reference-transaction voting on the node (the dial-back model).

A mutator routed through the proxy carries the transaction metadata decoded
by ``gitquorum.wire.transaction_metadata`` (which transaction, and where to
vote). The node votes with the SHA-1 of the reference updates, in the same
``<old> SP <new> SP <ref> LF`` form that git hands the
``reference-transaction`` hook, and commits only on a COMMIT answer.

Two paths produce votes:
* git commands that update refs on their own (receive-pack) run with
  ``core.hooksPath`` pointing at a tiny shell hook, which hands its stdin to
  this process over a loopback socket; this process votes and answers;
* RPCs that update refs themselves call ``vote`` directly between
  ``update-ref --stdin`` prepare and commit (see ``refupdate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import grpc

from gitquorum import log, tls, tokens
from gitquorum.errors import Aborted, Unavailable
from gitquorum.gitaly import shared_pb2, transaction_pb2, transaction_pb2_grpc
from gitquorum.wire.finishing import OutcomeUnknown
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, Transaction

ZERO_VOTE = b"\x00" * 20
_PHASES = {"prepared": PREPARED, "committed": COMMITTED}
_ZERO_OID = b"0" * 40

logger = log.get("gitquorum.voting")

# Wait for a reference locked by a concurrent transaction instead of failing at
# once (git's default is 100 ms): the lock is held only while that transaction
# votes. Concurrent updates of one ref reach the replicas in different orders; a
# secondary that gave up at once was marked outdated although it would have
# applied the winning update a moment later (seen in the chaos tests: two
# secondaries outdated together, the repository unavailable when the primary
# then failed).
_LOCK_WAIT = ("-c", "core.filesRefLockTimeout=1000")


def _target(address: str) -> str:
    # Addresses come as tcp://host:port, tls://host:port or unix:///path, as in gitaly-servers.
    return tls.split(address)[0]


def vote_hash(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def only_force_deletions(data: bytes) -> bool:
    """git's packed-refs cleanup transactions: every line deletes with zero old value."""
    lines = [line for line in data.split(b"\n") if line]
    return bool(lines) and all(line.split(b" ")[:2] == [_ZERO_OID, _ZERO_OID] for line in lines)


@dataclass
class _HookSession:
    tx: Transaction
    repository: shared_pb2.Repository


class VoteCoordinator:
    """Casts this node's votes and serves the reference-transaction hook."""

    def __init__(
        self,
        vote_timeout: float = 60.0,
        proxy_secret: bytes | None = None,
        client_tls: tls.ClientTLS | None = None,
    ) -> None:
        self.vote_timeout = vote_timeout
        self.proxy_secret = proxy_secret
        # CA (and client certificate) for proxies that advertise tls://.
        self.client_tls = client_tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._sessions: dict[str, _HookSession] = {}
        self._server: asyncio.base_events.Server | None = None
        self._port = 0
        self._hooks_dir = Path(tempfile.mkdtemp(prefix="gitquorum-hooks-"))
        self._empty_hooks_dir = self._hooks_dir / "none"
        self._vote_hooks_dir = self._hooks_dir / "vote"

    async def start(self) -> None:
        self._empty_hooks_dir.mkdir(parents=True, exist_ok=True)
        self._vote_hooks_dir.mkdir(parents=True, exist_ok=True)
        source = resources.files("gitquorum.storage").joinpath("hooks/reference-transaction")
        hook = self._vote_hooks_dir / "reference-transaction"
        hook.write_bytes(source.read_bytes())
        hook.chmod(0o755)
        self._server = await asyncio.start_server(self._serve_hook, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        shutil.rmtree(self._hooks_dir, ignore_errors=True)

    def no_hooks_args(self) -> list[str]:
        """git -c arguments that keep repository hooks from running at all."""
        return ["-c", f"core.hooksPath={self._empty_hooks_dir}", *_LOCK_WAIT]

    @contextlib.asynccontextmanager
    async def hook_session(
        self, tx: Transaction | None, repository: shared_pb2.Repository
    ) -> AsyncIterator[tuple[list[str], dict[str, str]]]:
        """(git -c args, env) for a git command whose ref updates must be voted on."""
        if tx is None:
            yield self.no_hooks_args(), {}
            return
        token = secrets.token_hex(16)
        self._sessions[token] = _HookSession(tx, repository)
        try:
            env = {"GITQUORUM_VOTE_PORT": str(self._port), "GITQUORUM_VOTE_TOKEN": token}
            yield ["-c", f"core.hooksPath={self._vote_hooks_dir}", *_LOCK_WAIT], env
        finally:
            self._sessions.pop(token, None)

    async def _serve_hook(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = b"abort malformed hook request\n"
        try:
            header = await asyncio.wait_for(reader.readline(), 10)
            token, phase, length = header.decode().split(" ")
            data = await asyncio.wait_for(reader.readexactly(int(length)), 10)
            session = self._sessions.get(token)
            if session is None:
                answer = b"abort unknown vote session\n"
            elif phase not in _PHASES or only_force_deletions(data):
                answer = b"commit\n"
            else:
                await self.vote(session.tx, session.repository, vote_hash(data), _PHASES[phase])
                answer = b"commit\n"
        except Aborted as exc:
            answer = f"abort {exc.message}\n".encode()
        except Exception as exc:
            logger.warning("hook vote failed", extra=log.fields(error=str(exc)))
            answer = f"abort {exc}\n".encode()
        finally:
            with contextlib.suppress(Exception):
                writer.write(answer)
                await writer.drain()
                writer.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            # The proxy's scheme decides: tls:// is dialled with TLS, tcp:// without.
            channel = tls.dial(address, self.client_tls)
            self._channels[address] = channel
        return channel

    async def vote(
        self,
        tx: Transaction | None,
        repository: shared_pb2.Repository,
        reference_updates_hash: bytes,
        phase: int,
    ) -> None:
        """Cast one vote; return on COMMIT.

        In the prepared phase nothing is applied yet: ABORT and STOP raise
        Aborted, a failed vote Unavailable, and the caller rolls back. In the
        committed phase the update is applied on this node already, whatever the
        answer: anything but COMMIT raises OutcomeUnknown, never Aborted (which
        would claim the update was not applied).
        """
        if tx is None:
            return
        stub = transaction_pb2_grpc.RefTransactionStub(self._channel(tx.proxy_address))
        request = transaction_pb2.VoteTransactionRequest(
            repository=repository,
            transaction_id=tx.id,
            node=tx.node,
            reference_updates_hash=reference_updates_hash,
            phase=phase,  # type: ignore[arg-type]
        )
        metadata = []
        secret = self.proxy_secret if self.proxy_secret is not None else tx.token.encode()
        if secret:
            metadata.append(tokens.bearer(secret))
        try:
            response = await stub.VoteTransaction(
                request, timeout=self.vote_timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            failure = f"transaction vote failed: {exc.code().name}: {exc.details()}"
            if phase == COMMITTED:
                raise OutcomeUnknown(f"the update is applied on this node; {failure}") from exc
            raise Unavailable(failure) from exc
        state = transaction_pb2.VoteTransactionResponse
        if response.state == state.COMMIT:
            return
        refusal = (
            "transaction was stopped"
            if response.state == state.STOP
            else "transaction was aborted: the cluster did not agree on the update"
        )
        if phase == COMMITTED:
            raise OutcomeUnknown(f"the update is applied on this node; {refusal}")
        raise Aborted(refusal)
