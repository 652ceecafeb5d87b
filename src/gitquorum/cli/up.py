"""Start a whole local cluster with no configuration: etcd, nodes, proxies, HTTP gateway.

Runs in the foreground until Ctrl-C or SIGTERM, then stops every part and
exits 0. Without ``--dir`` everything lives in a temporary directory removed
on exit; with it, repositories, etcd state and ports survive restarts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from gitquorum.cli import render
from gitquorum.cli.arguments import positive_duration
from gitquorum.localcluster import LaunchError, LocalCluster, Settings, saved_settings

# How often the foreground loop looks for children that died.
WATCH_INTERVAL = 0.5


class _Stop(Exception):
    """A stop signal arrived."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, help="storage nodes (default 3)")
    parser.add_argument("--proxies", type=int, help="proxies (default 1)")
    parser.add_argument(
        "--replication-factor",
        type=int,
        help="replicas per repository (default 3, or every node when fewer)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="keep the cluster's data, logs and ports here across runs "
        "(default: a temporary directory removed on exit)",
    )
    parser.add_argument("--no-http", action="store_true", help="do not start the HTTP gateway")
    parser.add_argument(
        "--json", action="store_true", help="print the endpoints as one JSON line once serving"
    )
    parser.add_argument(
        "--timeout",
        type=positive_duration,
        default=90.0,
        metavar="DURATION",
        help="how long to wait for the cluster to serve, e.g. 2m (default 90s; "
        "a bare number is seconds)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="turn authentication on: FILE holds the client secret (one word); "
        "proxies and nodes share a separate node secret kept in the data directory",
    )


def _settings(args: argparse.Namespace) -> Settings:
    # A kept directory remembers its topology, so a bare `gitquorum up --dir D`
    # restarts the same cluster; flags given now win.
    saved = saved_settings(args.dir) if args.dir is not None else {}

    def pick(name: str, default: int) -> int:
        value = getattr(args, name)
        return int(value) if value is not None else saved.get(name, default)

    settings = Settings(
        nodes=pick("nodes", 3),
        proxies=pick("proxies", 1),
        replication_factor=pick("replication_factor", 0),
        http=not args.no_http,
        token_file=_token_file(args.token_file) if args.token_file is not None else "",
    )
    if args.replication_factor is None and settings.replication_factor > settings.nodes:
        settings = dataclasses.replace(settings, replication_factor=0)
    settings.validate()
    return settings


def _token_file(path: Path) -> str:
    """The client secret file, checked: readable, one secret, usable by every front end."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--token-file {path}: cannot read: {exc.strerror}") from exc
    words = data.split()
    if not words:
        raise ValueError(f"--token-file {path}: holds no secret")
    # The HTTP gateway reads the same file as its users' secrets, one word each.
    if len(words) != 1:
        raise ValueError(f"--token-file {path}: expected one secret without blanks")
    if path.stat().st_mode & 0o077:
        _note(f"warning: {path} is readable by other users; chmod 600 it")
    return str(path.resolve())


def _summary(info: dict[str, Any]) -> str:
    proxy = info["proxies"][0]["address"]
    ssh = info["ssh"]["git_ssh_command"]
    config = info["config"]
    nodes, proxies = len(info["nodes"]), len(info["proxies"])
    auth = info.get("auth")
    # With authentication on, git-ssh signs its calls with the client secret.
    token_env = f"GITQUORUM_TOKEN_FILE={shlex.quote(auth['token_file'])} " if auth else ""
    lines = [
        f"gitquorum local cluster is up: {nodes} node{'s' * (nodes != 1)}, "
        f"{proxies} prox{'ies' if proxies != 1 else 'y'}, "
        f"replication factor {info['replication_factor']}, "
        f"virtual storage {info['virtual_storage']!r}",
        "",
    ]
    rows: list[tuple[str, str, str]] = []
    for p in info["proxies"]:
        rows.append((p["name"], p["address"], p["metrics_url"]))
    if info["http"] is not None:
        http = info["http"]
        rows.append(("http", http["url"], http["metrics_url"]))
    for n in info["nodes"]:
        rows.append((n["name"], n["address"], n["metrics_url"]))
    etcd = info["etcd"]
    rows.append(("etcd", etcd["address"], etcd["metrics_url"]))
    lines.append(
        render.table(
            None,
            [(name, address, f"metrics {metrics or '-'}") for name, address, metrics in rows],
            indent="  ",
        )
    )
    storages = {n["name"]: n["storage_path"] for n in info["nodes"]}
    lines.append(
        render.table(
            None, [(name, f"storage {path}") for name, path in storages.items()], indent="  "
        )
    )
    lines += [
        "",
        f"  config   {config}  (for `gitquorum proxy --config` and `gitquorum repo --config`)",
        f"  data     {info['data_dir']}"
        + ("  (temporary: removed on exit; keep it with --dir)" if info["temporary"] else ""),
        f"  logs     {info['logs_dir']}/",
        "",
        "Create a repository, push and clone over the SSH transport (git over gRPC):",
        f"  gitquorum repo create --config {shlex.quote(config)} group/project.git",
        f"  git remote add origin ssh://{proxy}/group/project.git",
        f"  {token_env}GIT_SSH_COMMAND={shlex.quote(ssh)} git push origin main",
        f"  {token_env}GIT_SSH_COMMAND={shlex.quote(ssh)} git clone ssh://{proxy}/group/project.git",
    ]
    if info["http"] is not None:
        url = info["http"]["url"]
        lines += [
            "",
            "Or over HTTP (a new project is created by its first push):",
            f"  git push {url}group/web.git main",
            f"  git clone {url}group/web.git",
        ]
    if auth:
        lines += [
            "",
            f"Authentication is on: clients need the secret in {auth['token_file']}",
            "  SSH transport: GITQUORUM_TOKEN_FILE names it (as above)",
            "  HTTP: any user name, the secret as password (git asks, or a credential helper)",
            "  gitquorum repo/admin: --config reads it from the proxy configuration",
        ]
    lines += [
        "",
        f"Inspect: gitquorum repo list --config {shlex.quote(config)}",
        f"         gitquorum repo info --config {shlex.quote(config)} group/project.git",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _note(message: str) -> None:
    print(f"gitquorum up: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except (ValueError, LaunchError) as exc:
        _note(str(exc))
        return 2
    signals = 0

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        # Only the first signal interrupts; a second one during shutdown means
        # "hurry" and is read by close() below.
        if signals == 1:
            raise _Stop

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    cluster = LocalCluster(settings, args.dir, progress=None if args.json else _note)
    try:
        cluster.start(timeout=args.timeout)
        info = cluster.endpoints()
        if args.json:
            print(json.dumps(info, separators=(",", ":")), flush=True)
        else:
            print(_summary(info), flush=True)
        while True:
            for child in cluster.newly_exited():
                _note(
                    f"{child.name} {child.describe_exit()} (log: {child.log_path}); "
                    "the cluster goes on without it"
                )
            time.sleep(WATCH_INTERVAL)
    except _Stop:
        if not args.json:
            _note("stopping")
    except LaunchError as exc:
        _note(f"cannot start the cluster: {exc}")
        return 1
    finally:
        cluster.close(hurry=lambda: signals > 1)
    if not args.json:
        _note("stopped")
    return 0
