"""An external Gitaly client, built from Gitaly's own protos, for compatibility tests.

Nothing here imports gitquorum: the client must see the node only through the
wire, and Gitaly's ``gitaly.*`` descriptors cannot share a process with
gitquorum's. Two flavours of stubs:

* ``2019``: compiled at test time from the 2019 protos that Debian's
  ``golang-gitaly-proto-dev`` installs (``compile OUTDIR`` does that);
* ``hgitaly``: the stubs in the ``hgitaly`` package, compiled from current
  Gitaly protos (no SSH service).

Commands (each prints one JSON object on stdout, except ``ssh``)::

    gitaly2019.py compile OUTDIR
    gitaly2019.py [--flavor F] [--stubs DIR] create ADDRESS STORAGE RELPATH
    gitaly2019.py [--flavor F] [--stubs DIR] inspect ADDRESS STORAGE RELPATH REVISION
    gitaly2019.py --stubs DIR ssh [-G] [-o OPT] [-p PORT] HOST COMMAND   (GIT_SSH_COMMAND)

``ssh`` reads the storage from GITALY2019_STORAGE and is what git runs to
push and fetch through SSHReceivePack and SSHUploadPack.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

PROTO_DIR = Path("/usr/share/gocode/src/gitlab.com/gitlab-org/gitaly-proto")
PACKAGE = "gitaly2019"


def compile_stubs(outdir: Path) -> Path:
    """Generate the 2019 stubs as package ``gitaly2019`` under ``outdir``."""
    import grpc_tools

    package = outdir / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    bundled = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{bundled}",
            f"--python_out={package}",
            f"--grpc_python_out={package}",
            *protos,
        ],
        cwd=PROTO_DIR,
        check=True,
        capture_output=True,
    )
    # protoc writes flat imports ("import shared_pb2"); inside a package they
    # must be relative.
    for module in package.glob("*_pb2*.py"):
        text = module.read_text()
        module.write_text(re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M))
    (package / "__init__.py").write_text("")
    return package


class Stubs:
    """The few modules the client uses, by flavour."""

    def __init__(self, flavor: str, stubs_dir: str | None) -> None:
        if flavor == "2019":
            if not stubs_dir:
                raise SystemExit("--stubs DIR is required for the 2019 flavour")
            sys.path.insert(0, stubs_dir)
            base, repository = PACKAGE, "repository_service"
        else:
            base, repository = "hgitaly.stub", "repository"

        def load(name: str) -> ModuleType:
            return importlib.import_module(f"{base}.{name}")

        self.shared = load("shared_pb2")
        self.repository = load(f"{repository}_pb2")
        self.repository_grpc = load(f"{repository}_pb2_grpc")
        self.commit = load("commit_pb2")
        self.commit_grpc = load("commit_pb2_grpc")
        self.ref = load("ref_pb2")
        self.ref_grpc = load("ref_pb2_grpc")
        if flavor == "2019":
            self.ssh = load("ssh_pb2")
            self.ssh_grpc = load("ssh_pb2_grpc")


def _channel(address: str) -> Any:
    import grpc

    return grpc.insecure_channel(address)


def create(stubs: Stubs, address: str, storage: str, relative: str) -> dict[str, Any]:
    repo = stubs.shared.Repository(storage_name=storage, relative_path=relative)
    with _channel(address) as channel:
        service = stubs.repository_grpc.RepositoryServiceStub(channel)
        exists = stubs.repository.RepositoryExistsRequest
        before = service.RepositoryExists(exists(repository=repo), timeout=30).exists
        service.CreateRepository(
            stubs.repository.CreateRepositoryRequest(repository=repo), timeout=30
        )
        after = service.RepositoryExists(exists(repository=repo), timeout=30).exists
    return {"exists_before": before, "exists_after": after}


def inspect(
    stubs: Stubs, address: str, storage: str, relative: str, revision: str
) -> dict[str, Any]:
    repo = stubs.shared.Repository(storage_name=storage, relative_path=relative)
    with _channel(address) as channel:
        commits = stubs.commit_grpc.CommitServiceStub(channel)
        find = stubs.commit.FindCommitRequest
        found = commits.FindCommit(find(repository=repo, revision=revision.encode()), timeout=30)
        missing = commits.FindCommit(
            find(repository=repo, revision=b"refs/heads/does-not-exist"), timeout=30
        )
        refs = stubs.ref_grpc.RefServiceStub(channel)
        default = refs.FindDefaultBranchName(
            stubs.ref.FindDefaultBranchNameRequest(repository=repo), timeout=30
        )
    return {
        "commit_id": found.commit.id,
        "subject": found.commit.subject.decode(errors="replace"),
        "author_email": found.commit.author.email.decode(errors="replace"),
        "missing_has_commit": missing.HasField("commit"),
        "default_branch": default.name.decode(),
    }


def ssh(stubs: Stubs, argv: list[str]) -> int:
    """A minimal gitlab-shell: git's SSH command line to SSHUploadPack/SSHReceivePack."""
    import grpc

    parser = argparse.ArgumentParser(prog="gitaly2019 ssh")
    parser.add_argument("-G", action="store_true")
    parser.add_argument("-p")
    parser.add_argument("-o", action="append", default=[])
    parser.add_argument("-4", action="store_true")
    parser.add_argument("-6", action="store_true")
    parser.add_argument("host")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.G:
        return 0
    program, path = shlex.split(" ".join(args.command))
    repo = stubs.shared.Repository(
        storage_name=os.environ["GITALY2019_STORAGE"], relative_path=path.lstrip("/")
    )
    protocol = os.environ.get("GIT_PROTOCOL", "")
    if program == "git-upload-pack":
        message = stubs.ssh.SSHUploadPackRequest
        first = message(repository=repo, git_protocol=protocol)
        rpc = "SSHUploadPack"
    elif program == "git-receive-pack":
        message = stubs.ssh.SSHReceivePackRequest
        first = message(repository=repo, gl_id="user-1", git_protocol=protocol)
        rpc = "SSHReceivePack"
    else:
        print(f"unsupported command {program}", file=sys.stderr)
        return 128

    def requests() -> Any:
        yield first
        while chunk := os.read(0, 65536):
            yield message(stdin=chunk)

    exit_status = 0
    with grpc.insecure_channel(f"{args.host.rpartition('@')[2]}:{args.p}") as channel:
        stub = stubs.ssh_grpc.SSHServiceStub(channel)
        try:
            for response in getattr(stub, rpc)(requests()):
                os.write(1, response.stdout)
                os.write(2, response.stderr)
                if response.HasField("exit_status"):
                    exit_status = response.exit_status.value
        except grpc.RpcError as error:
            print(f"gitaly2019: {error.code().name}: {error.details()}", file=sys.stderr)
            return exit_status or 128
    return exit_status


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "compile":
        print(json.dumps({"package": str(compile_stubs(Path(sys.argv[2])))}))
        return 0
    parser = argparse.ArgumentParser(prog="gitaly2019")
    parser.add_argument("--flavor", choices=["2019", "hgitaly"], default="2019")
    parser.add_argument("--stubs", default=os.environ.get("GITALY2019_STUBS"))
    parser.add_argument("command", choices=["create", "inspect", "ssh"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    stubs = Stubs(args.flavor, args.stubs)
    if args.command == "ssh":
        return ssh(stubs, args.rest)
    if args.command == "create":
        result = create(stubs, *args.rest)
    else:
        result = inspect(stubs, *args.rest)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
