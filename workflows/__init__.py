"""Temporal workflows of pairdb: orchestration only, no I/O (see docs/architecture.md)."""
