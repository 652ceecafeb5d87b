"""The storage node: a Gitaly-compatible gRPC server over real git repositories."""
