# Everything sets itself up: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/rnnserve_proto/*.proto)

NATIVE := .make-stamp-native

.PHONY: install proto native demo serve test pytest lint format typecheck check bench bench-train repository clean

install: $(STAMP)

# The editable install runs the build hook, which generates the protobuf modules.
$(STAMP): pyproject.toml hatch_build.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[server,client-cli,train,dev]'
	touch $@

# Regenerate after editing a .proto (every build also does it); only when a .proto is newer.
GENERATED := $(PROTOS:.proto=_pb2.py)
proto: $(GENERATED)
$(GENERATED) &: $(PROTOS) $(STAMP)
	$(BIN)/python hatch_build.py

# The hot path compiled with mypyc (server/rnnserve_server/compiled.py), rebuilt when a server
# source changes; without a C compiler the server runs pure Python (build_native.py says why,
# once: the stamp keeps it from retrying until a source changes).
native: $(NATIVE)
$(NATIVE): $(wildcard server/rnnserve_server/*.py server/rnnserve_server/grpc_api/*.py) build_native.py $(GENERATED)
	$(BIN)/python build_native.py $(if $(RNNSERVE_REQUIRE_NATIVE),--require)
	touch $@

demo: proto native
	$(BIN)/rnnserve-client demo

serve: proto native
	$(BIN)/rnnserve serve --model-repository model_repository

test: lint typecheck pytest

# Everything on the compiled hot path, then the server's own tests again on pure Python (the
# fallback where nothing is compiled; pure Python when RNNSERVE_PURE_PYTHON is set).
pytest: proto native
	$(BIN)/python -m pytest
	RNNSERVE_PURE_PYTHON=1 $(BIN)/python -m pytest tests/server

lint: proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: proto
	$(BIN)/mypy

check: test

bench: proto native
	$(BIN)/python -m bench.serving

bench-train: proto
	$(BIN)/python -m bench.training

# Retrain and re-export the shipped model repository (needs the train extra; minutes on CPU).
repository: proto
	$(BIN)/rnnserve-train ship --repository model_repository

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache proto/rnnserve_proto/*_pb2* build
	find server -name '*.so' -delete; rm -f $(NATIVE) server/rnnserve_server/compiled.json
