"""Reproducible benchmarks of gitquorum; recorded results live in docs/benchmarks.md."""
