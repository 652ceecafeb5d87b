"""Carry git's SSH transport over gRPC: GIT_SSH_COMMAND="gitquorum git-ssh".

git runs its SSH command as ``<cmd> [-o SendEnv=GIT_PROTOCOL] [-p PORT] [-4|-6]
[user@]HOST "git-upload-pack '/group/project.git'"`` and speaks the pack
protocol over the command's stdin and stdout. This helper turns that into
one SSHService call on HOST:PORT (or ``GITQUORUM_ADDRESS``):

* ``GITQUORUM_STORAGE``    storage name (default ``default``); the repository's
  relative path is the path git asked for, without its leading ``/``;
* ``GITQUORUM_TOKEN_FILE`` (or ``GITQUORUM_TOKEN``, the secret itself) shared
  secret for the v2 bearer token, if the endpoint requires authentication (the
  file's first line signs);
* ``GITQUORUM_TLS_CA`` dial TLS, verifying the endpoint with this CA file;
  ``GITQUORUM_TLS=1`` dials TLS with the system's roots, ``GITQUORUM_TLS=0``
  plaintext whatever else is set; ``GITQUORUM_TLS_CERT``/``GITQUORUM_TLS_KEY``
  a client certificate for endpoints that require one;
* ``GL_ID``/``GL_USERNAME``/``GL_REPOSITORY`` who is pushing (``GL_ID``
  defaults to ``user-1``); ``GIT_PROTOCOL`` (set by git) selects protocol v2;
* ``GITQUORUM_CORRELATION_ID`` the call's correlation id (else the endpoint
  makes one): the push's log lines on every proxy and node carry it.

It exits with git's exit status on the server, or prints the gRPC error and
exits 128 like ssh does when the remote command cannot be run. git first
probes an unknown SSH command with ``-G``; the helper answers that at once
(``GIT_SSH_VARIANT=ssh`` skips the probe). Imports are kept minimal: git
starts this once per fetch or push.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterator
from typing import Any

from gitquorum.wire.options import message_size_options

# Exit code of ssh when the remote command could not be run; git reports it as
# "Could not read from remote repository".
EXIT_FAILURE = 128
CHUNK = 64 * 1024
SERVICES = ("git-upload-pack", "git-receive-pack", "git-upload-archive")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Only the options git itself passes to an OpenSSH-like command.
    parser.add_argument("-p", dest="port", help="port of the gRPC endpoint")
    parser.add_argument("-o", dest="options", action="append", default=[], help="ignored")
    parser.add_argument("-4", dest="ipv4", action="store_true", help="ignored")
    parser.add_argument("-6", dest="ipv6", action="store_true", help="ignored")
    parser.add_argument("-G", dest="probe", action="store_true", help="answer git's ssh probe")
    parser.add_argument("host", help="[user@]HOST of the gRPC endpoint")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the git command to run")


def parse_command(words: list[str]) -> tuple[str, str]:
    """(service, relative path) from git's remote command line."""
    try:
        argv = shlex.split(" ".join(words))
    except ValueError as exc:
        raise ValueError(f"cannot parse remote command: {exc}") from None
    # "git upload-pack" and "/usr/bin/git-upload-pack" are spelled differently
    # but mean the same service.
    if len(argv) == 3 and os.path.basename(argv[0]) == "git":
        argv = [f"git-{argv[1]}", argv[2]]
    if len(argv) != 2:
        raise ValueError(f"unsupported remote command: {' '.join(words)!r}")
    service = os.path.basename(argv[0])
    if service not in SERVICES:
        raise ValueError(f"unsupported remote command: {service!r}")
    relative = argv[1].lstrip("/")
    if not relative:
        raise ValueError("no repository path given")
    return service, relative


def target_address(host: str, port: str | None) -> str:
    override = os.environ.get("GITQUORUM_ADDRESS")
    if override:
        return override
    if not port:
        raise ValueError("no port: use an ssh://HOST:PORT/ URL or set GITQUORUM_ADDRESS")
    host = host.rpartition("@")[2]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stdin_chunks() -> Iterator[bytes]:
    # grpc reads the request iterator on its own thread, so blocking here is fine.
    while True:
        chunk = os.read(0, CHUNK)
        if not chunk:
            return
        yield chunk


def _requests(first: Any, message: Any) -> Iterator[Any]:
    yield first
    for chunk in _stdin_chunks():
        yield message(stdin=chunk)


def _describe(error: Any, relative: str, storage: str, target: str) -> str:
    import grpc

    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return f"fatal: repository '{relative}' not found on storage '{storage}' ({details})"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"fatal: cannot reach gitquorum at {target}: {details}"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"fatal: gitquorum at {target} refused access: {details}"
    return f"fatal: {code.name.lower()}: {details}"


def _secret() -> bytes:
    """The signing secret: the first line of GITQUORUM_TOKEN_FILE, else GITQUORUM_TOKEN."""
    token_file = os.environ.get("GITQUORUM_TOKEN_FILE")
    if token_file:
        try:
            with open(token_file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise OSError(f"cannot read GITQUORUM_TOKEN_FILE: {exc}") from exc
    else:
        data = os.environ.get("GITQUORUM_TOKEN", "").encode()
    lines = [line.strip() for line in data.splitlines() if line.strip()]
    if token_file and not lines:
        raise ValueError(f"GITQUORUM_TOKEN_FILE {token_file} holds no secret")
    return lines[0] if lines else b""


def _credentials(grpc: Any) -> Any:
    """Channel credentials when TLS is asked for (see the module docstring), else None."""
    ca_file = os.environ.get("GITQUORUM_TLS_CA", "")
    switch = os.environ.get("GITQUORUM_TLS", "")
    if switch == "0" or (switch != "1" and not ca_file):
        return None

    def read(name: str) -> bytes | None:
        path = os.environ.get(name, "")
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise OSError(f"cannot read {name}: {exc}") from exc

    cert, key = read("GITQUORUM_TLS_CERT"), read("GITQUORUM_TLS_KEY")
    if (cert is None) != (key is None):
        raise ValueError("GITQUORUM_TLS_CERT and GITQUORUM_TLS_KEY go together")
    return grpc.ssl_channel_credentials(read("GITQUORUM_TLS_CA"), key, cert)


def run(args: argparse.Namespace) -> int:
    if args.probe:
        return 0
    storage = os.environ.get("GITQUORUM_STORAGE", "default")
    try:
        service, relative = parse_command(args.command)
        target = target_address(args.host, args.port)
    except ValueError as exc:
        print(f"fatal: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    import grpc

    from gitquorum.gitaly import shared_pb2, ssh_pb2, ssh_pb2_grpc

    metadata: list[tuple[str, str]] = []
    try:
        secret = _secret()
        credentials = _credentials(grpc)
    except (OSError, ValueError) as exc:
        print(f"fatal: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if secret:
        from gitquorum import tokens

        metadata.append(tokens.bearer(secret))
    correlation = os.environ.get("GITQUORUM_CORRELATION_ID", "")
    if correlation:
        from gitquorum.log import valid_correlation_id

        if not valid_correlation_id(correlation):
            print(
                "fatal: GITQUORUM_CORRELATION_ID must be 1 to 128 letters, digits, '.', '_' or '-'",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        metadata.append(("x-gitquorum-correlation-id", correlation))

    repository = shared_pb2.Repository(storage_name=storage, relative_path=relative)
    protocol = os.environ.get("GIT_PROTOCOL", "")
    options = message_size_options()
    channel = (
        grpc.insecure_channel(target, options=options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=options)
    )
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    requests: Iterator[Any]
    if service == "git-upload-pack":
        first = ssh_pb2.SSHUploadPackRequest(repository=repository, git_protocol=protocol)
        requests = _requests(first, ssh_pb2.SSHUploadPackRequest)
        responses = stub.SSHUploadPack(requests, metadata=metadata)
    elif service == "git-receive-pack":
        first = ssh_pb2.SSHReceivePackRequest(
            repository=repository,
            gl_id=os.environ.get("GL_ID", "user-1"),
            gl_username=os.environ.get("GL_USERNAME", ""),
            gl_repository=os.environ.get("GL_REPOSITORY", ""),
            git_protocol=protocol,
        )
        requests = _requests(first, ssh_pb2.SSHReceivePackRequest)
        responses = stub.SSHReceivePack(requests, metadata=metadata)
    else:
        first = ssh_pb2.SSHUploadArchiveRequest(repository=repository)
        requests = _requests(first, ssh_pb2.SSHUploadArchiveRequest)
        responses = stub.SSHUploadArchive(requests, metadata=metadata)

    exit_status: int | None = None
    try:
        for response in responses:
            if response.stdout:
                _write(1, response.stdout)
            if response.stderr:
                _write(2, response.stderr)
            if response.HasField("exit_status"):
                exit_status = response.exit_status.value
    except grpc.RpcError as error:
        # A failed git command sends its exit status, then an error; git has
        # already printed its own explanation, so the status is all we add.
        if exit_status is not None:
            return exit_status
        print(_describe(error, relative, storage, target), file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # git closed our stdout: it has what it needs or gave up.
        return EXIT_FAILURE
    finally:
        channel.close()
    return exit_status or 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="gitquorum git-ssh", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
