"""What every pairdb server process shares: gRPC server set-up, request ids, guards, metrics, logs."""
