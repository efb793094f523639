"""pairdb: a multi-tenant replicated key-value store that grows its cluster online."""
