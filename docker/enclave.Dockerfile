# syntax=docker/dockerfile:1
# The enclave image: licensing-enclave and what it imports (licensing_common and the
# generated enclave.v1 stubs), nothing of the server: no CA, storage, TPM or Kubernetes code.
# Build from the repository root:
#   docker build -f docker/enclave.Dockerfile -t licensing-enclave:0.1.0 .
# Not built in CI (no container engine runs there): tests/deploy/test_dockerfiles.py checks
# what this file promises. The enclave makes its key at start; no key is ever baked in.

FROM python:3.11.7-slim-bookworm AS build
RUN python -m venv /opt/enclave
WORKDIR /src
COPY constraints.txt ./
# enclave/pyproject.toml bundles licensing_common and the enclave.v1 stubs from their one
# place in the tree; only those two folders of server/ are copied, never licensing_server.
COPY enclave enclave
COPY server/src/licensing_common server/src/licensing_common
COPY server/gen/enclave server/gen/enclave
RUN /opt/enclave/bin/pip install --no-cache-dir -c constraints.txt ./enclave

FROM python:3.11.7-slim-bookworm
RUN groupadd --gid 10001 enclave \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent enclave
COPY --from=build /opt/enclave /opt/enclave
ENV PATH=/opt/enclave/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["licensing-enclave"]
