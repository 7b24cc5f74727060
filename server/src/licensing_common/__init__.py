"""What every process shares: domain errors and their statuses, gRPC server plumbing,
token verification, identities, the attestation binding, phases and logging.

Depends on grpcio (+ reflection, health, status), protobuf, cryptography and pyjwt only,
and imports nothing else of ours: the client and the enclave ship it alongside themselves.
"""
