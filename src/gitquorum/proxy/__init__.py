"""The client-facing endpoint: registry, router, raw-bytes handler, transactions."""
