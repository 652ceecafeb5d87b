"""Cluster state in etcd: store contract, health consensus, leader election,
repository records and generations, replication queue, metrics.

Everything here is written against :class:`gitquorum.cluster.store.Store`;
``EtcdStore`` is the production implementation, ``MemoryStore`` the unit-test one.
"""

from gitquorum.cluster.election import FencingToken, LeaderElection, fenced_txn
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.health import Consensus, HealthChecker, HealthSnapshot, consensus
from gitquorum.cluster.keys import Keyspace, replica_path
from gitquorum.cluster.lease import LeaseKeeper
from gitquorum.cluster.membership import HealthView, ProxyMembership
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import JobState, JobType, QueueView, ReplicationJob, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryRecord, RepositoryStore
from gitquorum.cluster.store import Compare, Op, Store

__all__ = [
    "Compare",
    "Consensus",
    "EtcdConfig",
    "EtcdStore",
    "FencingToken",
    "HealthChecker",
    "HealthSnapshot",
    "HealthView",
    "JobState",
    "JobType",
    "Keyspace",
    "LeaderElection",
    "LeaseKeeper",
    "MemoryStore",
    "Op",
    "ProxyMembership",
    "QueueView",
    "ReplicationJob",
    "ReplicationQueue",
    "RepositoryCache",
    "RepositoryRecord",
    "RepositoryStore",
    "Store",
    "StoreUnavailable",
    "consensus",
    "fenced_txn",
    "replica_path",
]
