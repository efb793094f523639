"""The kernel every layer shares: keys and tokens, versions and records, clocks, migration phases.

Plain data and pure functions only, no I/O and no gRPC: storage nodes, coordinators,
the worker and the client all build on it.
"""
