"""gitquorum: replicated git storage behind one Gitaly-compatible endpoint."""

# The one version source: pyproject.toml reads it, `gitquorum --version` prints it.
__version__ = "0.1.0"
