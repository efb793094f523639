"""A whole pairdb cluster on one machine: supervised PostgreSQL, Temporal and pairdb processes, faults."""
