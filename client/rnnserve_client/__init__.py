"""Python client for rnnserve (needs only grpcio and numpy)."""
