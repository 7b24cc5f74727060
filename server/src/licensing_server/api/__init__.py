"""gRPC edge: TLS listeners, the access policy, error mapping, reflection and health."""
