"""gitquorum: replicated git storage behind one Gitaly-compatible endpoint."""

__version__ = "0.1.0"
