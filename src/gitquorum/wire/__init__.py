"""What the proxy, the storage node and the gateways share, and nothing else.

The modules here depend on the generated protocol modules and the package's
top-level helpers (errors, log, metrics, tls) only, never on ``proxy``,
``storage``, ``gateway``, ``cluster`` or ``cli``: both sides of a hop read the
same definitions without importing each other. Nothing is imported here, so
loading one module (the SSH helper loads ``options``) costs no other.
"""
