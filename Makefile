# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(BIN):$(PATH)
GENERATED := server/gen clients/python/licensing_client/gen
# The API reference, generated from the .proto comments (scripts/api_docs.py).
GENERATED += docs/api.md
HAND_WRITTEN := $(wildcard server/src enclave/src clients/python/licensing_client tests bench)
HAND_WRITTEN += scripts/api_docs.py

.PHONY: run test setup setup-run generate generate-check lint typecheck pytest postgres clean

## Start backend + frontend on embedded defaults (state in ./.licensing/).
run: setup-run
	$(BIN)/licensing-server

## Install everything and pass every check and test.
test: setup generate-check lint typecheck pytest

setup:
	scripts/setup.sh

setup-run:
	scripts/setup.sh --run

## Regenerate every generated folder from protos/.
generate: setup
	scripts/generate.sh

## Fail when the committed generated code differs from what protos/ produce.
generate-check: setup
	scripts/generate.sh
	@git diff --exit-code --stat -- $(GENERATED) || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- $(GENERATED))" || { git status --porcelain -- $(GENERATED); echo "generated code is stale: run 'make generate' and commit"; exit 1; }

lint: setup
	$(BIN)/buf lint
	$(BIN)/buf format -d --exit-code
	scripts/buf-breaking.sh
	$(BIN)/ruff check $(HAND_WRITTEN)
	$(BIN)/ruff format --check $(HAND_WRITTEN)

typecheck: setup
	$(BIN)/mypy

pytest: setup
	LICENSING_TEST_POSTGRES_URL="$$(scripts/postgres.sh)" $(BIN)/pytest -q

clean:
	rm -rf .licensing .pytest_cache .mypy_cache .ruff_cache
