"""A LocalCluster start that fails half-way stops every child it had started.

etcd is a stand-in that answers ``/health``; nodes and proxies are stand-ins
too (the real ones are exercised by tests/acceptance/test_up.py): the nodes
sleep, and one proxy exits at once, which fails the start after etcd, every
node and the other proxy were spawned.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from gitquorum.localcluster import Child, LaunchError, LocalCluster, Settings

FAKE_ETCD = textwrap.dedent(
    f"""\
    #!{sys.executable}
    import http.server, sys, urllib.parse

    url = sys.argv[sys.argv.index("--listen-client-urls") + 1]
    port = urllib.parse.urlsplit(url).port

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{{"health":"true"}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


def test_a_failed_start_stops_every_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = tmp_path / "etcd"
    etcd.write_text(FAKE_ETCD)
    etcd.chmod(0o755)
    monkeypatch.setenv("GITQUORUM_ETCD_BIN", str(etcd))

    def stand_in(self: LocalCluster, *args: str) -> list[str]:
        # The last proxy dies at once; everything else would run for a minute.
        fails = args[0] == "proxy" and f"proxy{self.settings.proxies}.ready" in args[-1]
        code = "raise SystemExit(3)" if fails else "import time; time.sleep(60)"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(LocalCluster, "_python", stand_in)
    cluster = LocalCluster(Settings(nodes=2, proxies=2, http=False))
    with pytest.raises(LaunchError, match="proxy2 exited with status 3 while starting"):
        cluster.start(timeout=30)

    started: list[Child] = cluster.children
    assert [c.name for c in started] == ["etcd", "node1", "node2", "proxy1", "proxy2"]
    assert all(c.proc is not None for c in started)
    for child in started:
        assert child.exited(), f"{child.name} still runs"
        assert child.proc is not None and child.proc.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(child.pid, 0)
    # The temporary data directory and its lock went with them.
    assert not cluster.data_dir.exists()
