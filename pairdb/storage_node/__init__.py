"""A pairdb storage node: durable, versioned, token-ordered records."""
