"""pairdb: a multi-tenant replicated key-value store that grows its cluster online."""

import os

# gRPC core logs an INFO line whenever a process with live channels forks (as a
# supervisor starting children does); keep its default output to errors.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
