"""Temporal activities of node addition: each one idempotent step that touches the world."""
