# syntax=docker/dockerfile:1
# The licensing server image: licensing-frontend, licensing-backend, licensing-admin, the
# swtpm sidecar of the dev overlay (python -m licensing_server.tpm) and grpc_health_probe for
# the exec probes. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t licensing-server:0.1.0 .
# Not built in CI (no container engine runs there): tests/deploy/test_dockerfiles.py checks
# what this file promises (multi-stage, pinned bases, numeric non-root USER, no secrets).
# No ARG or ENV here carries a secret: keys, passwords and the CA arrive at run time as
# Kubernetes Secrets (k8s/README.md).

# -- grpc_health_probe: the kubelet's own gRPC probe cannot speak TLS, every port here is TLS.
FROM golang:1.26.8-bookworm AS probe
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
RUN GOBIN=/out go install github.com/grpc-ecosystem/grpc-health-probe@v0.4.63

# -- the Python environment, built with compilers the runtime image does not carry.
FROM python:3.11.7-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc pkg-config libtss2-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/licensing
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY server/src server/src
COPY server/gen server/gen
COPY clients/python clients/python
COPY enclave/src enclave/src
RUN /opt/licensing/bin/pip install --no-cache-dir -c constraints.txt .

# -- the runtime: shared libraries only, no compiler, no sources.
FROM python:3.11.7-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtss2-esys-3.0.2-0 libtss2-fapi1 libtss2-mu0 libtss2-rc0 libtss2-sys1 \
      libtss2-tctildr0 libtss2-tcti-device0 libtss2-tcti-swtpm0 \
      swtpm swtpm-tools \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 licensing \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/licensing licensing
COPY --from=build /opt/licensing /opt/licensing
COPY --from=probe /out/grpc-health-probe /usr/local/bin/grpc_health_probe
ENV PATH=/opt/licensing/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LICENSING_DATA_DIR=/var/lib/licensing
# The manifests mount an emptyDir here (the root filesystem is read-only).
WORKDIR /var/lib/licensing
USER 10001:10001
ENTRYPOINT ["licensing-server"]
