"""The pairdb coordinator: routes client reads and writes to storage nodes."""
