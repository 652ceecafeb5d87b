"""The ``gitquorum`` command: one module per subcommand."""
