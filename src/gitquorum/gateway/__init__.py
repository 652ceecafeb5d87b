"""Front ends that let the real git CLI talk to gitquorum.

``http`` is the smart-HTTP gateway (``gitquorum http``): it turns git's HTTP
requests into SmartHTTPService calls on a proxy (or a node). The SSH
transport lives in ``gitquorum.cli.git_ssh``.
"""
