"""Start gitquorum's parts as child processes on this machine.

What ``gitquorum up`` (:mod:`gitquorum.localcluster`), the test harness and the
benchmarks share: one child-process type with a ready file and the signals a
test or an operator sends it (:mod:`.process`), finding and running etcd
members (:mod:`.etcd`), and the proxy configuration they all generate
(:mod:`.proxy_config`).
"""
