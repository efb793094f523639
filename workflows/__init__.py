"""Temporal workflows of pairdb: orchestration only, no I/O (see DESIGN.md §6)."""
