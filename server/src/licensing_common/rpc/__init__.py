"""gRPC server plumbing: TLS listeners, the guard, policy kinds, the error table, reflection."""
