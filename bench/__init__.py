"""Benchmarks and the chaos harness: run from the repository, never installed."""
