"""``gitquorum check``: is the cluster fit to serve? One line per check, exit 1 on any failure.

Checks, from the host the command runs on:

* ``etcd``: the endpoints answer a read;
* ``proxies``: at least one proxy is registered, and each registered proxy
  answers its gRPC health check; ``leader``: a leader is elected;
  ``settings``: every live proxy runs with the same cluster-wide settings
  (the hashes in their membership records; config_settings.py);
* ``node <name>``: each configured node answers its gRPC health check;
  ``disk <name>``: its ``ServerInfo`` reports the storage readable and
  writeable (the node creates and removes a file to know);
* ``consensus``: nodes the proxies' majority deems unhealthy (a warning:
  failover already routes around them);
* ``clock <target>``: the HTTP ``Date`` of every etcd endpoint and of each
  ``--metrics HOST:PORT`` (the ``/metrics`` listener of a proxy or node) is
  within ``--max-clock-skew`` (default 1m) of this host's clock, since job
  timestamps and token expiry are compared across hosts;
* ``repositories``: unavailable repositories (a warning: see ``dataloss``);
* ``operator``: the cluster is paused or nodes are drained (a warning).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import ClusterView, read_view
from gitquorum.cli.render import table
from gitquorum.cluster.decisions import valid_primaries
from gitquorum.cluster.settings import settings_agreement, settings_hash
from gitquorum.config_settings import cluster_settings
from gitquorum.gitaly import server_pb2, server_pb2_grpc

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str = ""

    def data(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, virtual_storage=False)
    parser.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a proxy's or node's /metrics listener whose clock to compare (repeatable)",
    )
    parser.add_argument(
        "--max-clock-skew",
        type=common.parse_duration_arg,
        default=60.0,
        metavar="DURATION",
        help="largest tolerated clock difference (default 1m)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")


async def clock_offset(session: aiohttp.ClientSession, url: str) -> float:
    """Remote clock minus local clock, from the HTTP Date header (1 s resolution)."""
    sent = time.time()
    async with session.get(url) as response:
        received = time.time()
        header = response.headers.get("Date")
    if not header:
        raise ValueError("no Date header")
    remote = email.utils.parsedate_to_datetime(header).timestamp()
    # Date is truncated to the second: compare with the middle of that second.
    return remote + 0.5 - (sent + received) / 2


def etcd_urls(admin: common.Admin) -> list[str]:
    urls = []
    tls = bool(admin.config.etcd.ca_file)
    for endpoint in admin.config.etcd.endpoints:
        if endpoint.startswith(("http://", "https://")):
            urls.append(endpoint.rstrip("/") + "/version")
        else:
            urls.append(f"{'https' if tls else 'http'}://{endpoint}/version")
    return urls


def ssl_context(admin: common.Admin) -> ssl.SSLContext | None:
    etcd = admin.config.etcd
    if not etcd.ca_file:
        return None
    context = ssl.create_default_context(cafile=etcd.ca_file)
    if etcd.cert_file and etcd.key_file:
        context.load_cert_chain(etcd.cert_file, etcd.key_file)
    return context


async def check_clocks(admin: common.Admin, extra: list[str], max_skew: float) -> list[Check]:
    targets = [(f"clock etcd {u.split('://', 1)[1].split('/', 1)[0]}", u) for u in etcd_urls(admin)]
    targets += [(f"clock {m}", f"http://{m}/metrics") for m in extra]
    timeout = aiohttp.ClientTimeout(total=min(admin.timeout, 5.0))
    connector = aiohttp.TCPConnector(ssl=ssl_context(admin) or False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(name: str, url: str) -> Check:
            try:
                offset = await clock_offset(session, url)
            except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                return Check(name, FAIL, f"no time from {url}: {exc or type(exc).__name__}")
            detail = f"offset {offset:+.1f}s"
            return Check(name, OK if abs(offset) <= max_skew else FAIL, detail)

        return list(await asyncio.gather(*(one(n, u) for n, u in targets)))


async def check_nodes(admin: common.Admin) -> list[Check]:
    channels = admin.node_channels()

    async def one(node: str) -> list[Check]:
        channel = channels.channel(node)
        address = channels.addresses[node]
        seconds = min(admin.timeout, 5.0)
        if not await common.health_check(channel, seconds):
            return [
                Check(f"node {node}", FAIL, f"{address} does not answer its health check"),
                Check(f"disk {node}", FAIL, "node unreachable"),
            ]
        try:
            info = await server_pb2_grpc.ServerServiceStub(channel).ServerInfo(
                server_pb2.ServerInfoRequest(), metadata=admin.node_metadata(), timeout=seconds
            )
        except grpc.aio.AioRpcError as exc:
            return [
                Check(f"node {node}", OK, address),
                Check(f"disk {node}", FAIL, f"ServerInfo failed: {exc.code().name}"),
            ]
        status = next((s for s in info.storage_statuses if s.storage_name == node), None)
        if status is None:
            disk = Check(f"disk {node}", FAIL, f"{address} does not serve storage {node!r}")
        elif not (status.readable and status.writeable):
            problems = [
                w
                for w, ok in (("readable", status.readable), ("writeable", status.writeable))
                if not ok
            ]
            disk = Check(f"disk {node}", FAIL, "not " + " and not ".join(problems))
        else:
            disk = Check(f"disk {node}", OK, f"readable, writeable ({status.fs_type})")
        return [Check(f"node {node}", OK, f"{address}, git {info.git_version}"), disk]

    results = await asyncio.gather(*(one(n) for n in sorted(channels.addresses)))
    return [check for pair in results for check in pair]


async def check_proxies(admin: common.Admin, view: ClusterView) -> list[Check]:
    if not view.proxies:
        return [Check("proxies", FAIL, "no proxy is registered in etcd")]

    async def answers(address: str) -> bool:
        channel = admin.dial_proxy(address)  # TLS when the proxies serve it
        try:
            return await common.health_check(channel, min(admin.timeout, 5.0))
        finally:
            await channel.close()

    results = await asyncio.gather(*(answers(p.address) for p in view.proxies))
    silent = [p.name for p, ok in zip(view.proxies, results, strict=True) if not ok]
    names = ", ".join(p.name for p in view.proxies)
    checks = [
        Check("proxies", FAIL, f"registered but not answering: {', '.join(silent)}")
        if silent
        else Check("proxies", OK, f"{len(view.proxies)} live: {names}")
    ]
    checks.append(
        Check("leader", OK, view.leader)
        if view.leader
        else Check("leader", FAIL, "no leader elected: no failover, repair or verification")
    )
    checks.append(settings_check(admin, view))
    return checks


def settings_check(admin: common.Admin, view: ClusterView) -> Check:
    """The live proxies run with the same cluster-wide settings (and this --config too)."""
    agreement = settings_agreement({p.name: p.settings for p in view.proxies})
    if not agreement.agree:
        groups = "; ".join(f"{', '.join(names)} ({h})" for h, names in agreement.groups)
        return Check(
            "settings",
            FAIL,
            f"proxies differ in {', '.join(agreement.differing)}: {groups}",
        )
    notes = []
    if agreement.unknown:
        notes.append(f"no settings published by {', '.join(agreement.unknown)} (older version)")
    if agreement.groups:
        shared, _names = agreement.groups[0]
        if settings_hash(cluster_settings(admin.config)) != shared:
            notes.append(f"this --config differs from the proxies' ({shared})")
        if not notes:
            return Check("settings", OK, f"every proxy runs the same settings ({shared})")
    return Check("settings", WARN, "; ".join(notes) or "no proxy published settings")


def state_checks(admin: common.Admin, view: ClusterView) -> list[Check]:
    checks = []
    unhealthy = []
    unavailable = 0
    for vs in admin.config.virtual_storages:
        healthy = view.healthy(vs.name)
        unhealthy += [f"{vs.name}/{n.storage}" for n in vs.nodes if n.storage not in healthy]
        unavailable += sum(1 for r in view.records_of(vs.name) if not valid_primaries(r, healthy))
    checks.append(
        Check("consensus", WARN, "unhealthy by consensus: " + ", ".join(unhealthy))
        if unhealthy
        else Check("consensus", OK, "every node healthy by consensus")
    )
    checks.append(
        Check("repositories", WARN, f"{unavailable} unavailable (see `gitquorum dataloss`)")
        if unavailable
        else Check("repositories", OK, f"{len(view.records)} tracked, none unavailable")
    )
    notes = []
    if view.operator.paused:
        notes.append("paused (no failover, no repair)")
    drained = [
        f"{vs}/{n}" for vs, nodes in sorted(view.operator.drained.items()) for n in sorted(nodes)
    ]
    if drained:
        notes.append("drained: " + ", ".join(drained))
    checks.append(
        Check("operator", WARN, "; ".join(notes))
        if notes
        else Check("operator", OK, "not paused, nothing drained")
    )
    return checks


def render(checks: list[Check], quiet: bool) -> str:
    shown = [c for c in checks if not quiet or c.status != OK]
    if not shown:
        return ""
    return table(None, [(c.status.upper(), c.name, c.detail or "") for c in shown])


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        checks: list[Check] = []
        view = None
        try:
            store = await admin.store()
            checks.append(Check("etcd", OK, ", ".join(admin.config.etcd.endpoints)))
            view = await read_view(store, admin.keys)
        except common.Unreachable as exc:
            checks.append(Check("etcd", FAIL, str(exc)))
        if view is not None:
            checks += await check_proxies(admin, view)
        checks += await check_nodes(admin)
        if view is not None:
            checks += state_checks(admin, view)
        checks += await check_clocks(admin, args.metrics, args.max_clock_skew)
        failed = [c for c in checks if c.status == FAIL]
        data: dict[str, Any] = {"ok": not failed, "checks": [c.data() for c in checks]}
        common.emit(args, data, lambda: render(checks, args.quiet))
        if not args.json:
            warned = sum(1 for c in checks if c.status == WARN)
            print(f"{len(checks)} checks: {len(failed)} failed, {warned} warnings")
        return common.EXIT_PROBLEM if failed else common.EXIT_OK

    return common.run(args, body)
