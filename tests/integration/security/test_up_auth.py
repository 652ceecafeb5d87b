"""``gitquorum up --token-file FILE``: a local cluster with authentication on.

The file holds the client secret: git over the SSH helper and over HTTP, and
``gitquorum repo``, work with it and are refused without it; the nodes take
only the separate node secret that ``up`` made in the data directory.
"""

from __future__ import annotations

import secrets
import stat
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.acceptance.test_up import Up, clean_env, cli, git, ok, ssh_url
from tests.harness import gitrepo
from tests.integration.security.helpers import Endpoint, server_info, status


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    token = tmp_path / "client-token"
    token.write_text(f"up-{secrets.token_hex(16)}\n")
    token.chmod(0o600)
    up = Up(tmp_path, "--token-file", str(token))
    try:
        info = up.wait_serving()
        yield info, token.read_text().strip(), up
    finally:
        up.cleanup()


def test_up_with_a_token_file(cluster: Any, tmp_path: Path) -> None:
    info, secret, up = cluster
    auth = info["auth"]
    assert Path(auth["token_file"]).read_text().strip() == secret
    node_token = Path(auth["node_token_file"])
    assert stat.S_IMODE(node_token.stat().st_mode) == 0o600
    assert node_token.read_text().strip() not in ("", secret)

    # gitquorum repo reads the secret from the proxy configuration up wrote.
    relative = f"group/{uuid.uuid4().hex[:8]}.git"
    ok(cli("repo", "create", "--config", info["config"], relative))

    work = gitrepo.make_repo(tmp_path / "work", commits=2, branches=(), tags=(), annotated_tags=())
    env = {**clean_env(), "GIT_SSH_COMMAND": info["ssh"]["git_ssh_command"]}
    with_token = {**env, "GITQUORUM_TOKEN_FILE": auth["token_file"]}
    url = ssh_url(info, relative)
    refused = git("push", url, "main", env=env, cwd=work)
    assert refused.returncode != 0 and "authentication required" in refused.stderr
    ok(git("push", url, "main", env=with_token, cwd=work))
    ok(git("clone", "-q", url, str(tmp_path / "clone"), env=with_token))
    assert (tmp_path / "clone" / "README.md").exists()

    # HTTP: any user name, the secret as password.
    http = info["http"]["url"].removeprefix("http://")
    no_prompt = {**env, "GIT_TERMINAL_PROMPT": "0"}
    web = f"group/{uuid.uuid4().hex[:8]}.git"
    anonymous = git("push", f"http://{http}{web}", "main", env=no_prompt, cwd=work)
    assert anonymous.returncode != 0
    ok(git("push", f"http://me:{secret}@{http}{web}", "main", env=no_prompt, cwd=work))
    ok(git("clone", "-q", f"http://me:{secret}@{http}{web}", str(tmp_path / "web"), env=no_prompt))

    # The client secret does not open a node: the node secret is another one.
    node = Endpoint(info["nodes"][0]["address"]).with_token(secret)
    assert status(lambda: server_info(node))[0] == grpc.StatusCode.UNAUTHENTICATED

    # Neither secret in any log.
    node_secret = node_token.read_text().strip()
    for log in Path(info["logs_dir"]).glob("*.log"):
        text = log.read_text(errors="replace")
        assert secret not in text and node_secret not in text, log
    assert up.stop() == 0
