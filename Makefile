# Every target bootstraps the .venv it needs from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := proto/turnstore/v1/turnstore.proto
GEN_DIR := client/python

.PHONY: run test soak check proto proto-check lint typecheck clean bench rust-check rust-proto-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the daemon on ./turnstore-data, listening on 127.0.0.1:7070
run: $(STAMP)
	$(BIN)/turnstore serve

## test: the whole test suite against real daemons, in TEST_WORKERS pytest-xdist workers
## (most tests wait on daemons, timers and disks, so two cores serve two workers; a file's
## tests stay on one worker: tests/conftest.py). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

## soak: the crash-safety loop of tests/test_crash.py, with 200 SIGKILLs, then
## tests/test_power_cut.py's with 200 simulated power cuts (POWER_CUTS=0 skips it);
## SOAK_ARGS="--backend postgres --kills 30": tests/test_postgres_crash.py's, with 30 faults
POWER_CUTS ?= 200
soak: $(STAMP)
	$(BIN)/python -m tests.support.soak --kills 200 $(SOAK_ARGS)
	if [ "$(POWER_CUTS)" != 0 ]; then $(BIN)/python -m tests.support.soak --backend lmdb-power-cut --kills $(POWER_CUTS); fi

## bench: turnstore (LMDB, PostgreSQL) vs Redis Streams, SQLite and raw LMDB (~7 min; installs
## redis-server and postgresql if missing); prints tables, writes bench/results/. BENCH_ARGS=--quick: a smoke run
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## check: lint, type-check (mypy, tsc, clippy), buf lint, and fail when the generated code
## (or a client package's proto copy) is stale
check: $(STAMP) proto-check rust-proto-check lint typecheck buflint rust-check

## buflint: buf lint of proto/ (STANDARD rules, proto/buf.yaml); buf is pinned in
## client/typescript's devDependencies (keep the two versions equal), so it runs offline
BUF_VERSION := 1.74.0
TS_CLIENT := client/typescript
.PHONY: buflint
$(TS_CLIENT)/node_modules/.package-lock.json: $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
buflint: $(TS_CLIENT)/node_modules/.package-lock.json
	cd $(TS_CLIENT) && npx --offline --yes @bufbuild/buf@$(BUF_VERSION) lint ../../proto

## tscheck: tsc of the TypeScript client and its tests (strict, no output), after
## generating its proto types as its build does
.PHONY: tscheck
check: tscheck
tscheck: $(TS_CLIENT)/node_modules/.package-lock.json
	cd $(TS_CLIENT) && npm run --silent gen && npx --offline tsc -p . --noEmit

## rust-check: clippy (warnings are errors), rustfmt and rustdoc (warnings, such as an undocumented
## public item, are errors) for the Rust client in client/rust;
## builds go to one target directory under ~/.cache shared by every checkout (as
## tests/test_rust.py's), so a fresh clone on a machine that built before reuses its dependencies
RUST_DIR := client/rust
RUST_TARGET_DIR ?= $(HOME)/.cache/turnstore/rust-target
rust-check:
	cd $(RUST_DIR) && CARGO_TARGET_DIR=$(RUST_TARGET_DIR) cargo clippy --locked --all-targets -- -D warnings
	cd $(RUST_DIR) && cargo fmt --check
	cd $(RUST_DIR) && CARGO_TARGET_DIR=$(RUST_TARGET_DIR) RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps

## rust-proto-check: fail when the Rust crate's copy of the proto (what its build.rs reads, so
## the published crate builds on its own) differs from proto/; `make proto` refreshes it
RUST_PROTO_COPY ?= $(RUST_DIR)/$(PROTO_SRC)
rust-proto-check:
	@cmp -s $(PROTO_SRC) $(RUST_PROTO_COPY) || { echo "stale proto copy: $(RUST_PROTO_COPY) differs from $(PROTO_SRC) (run make proto)"; exit 1; }
	@echo "the Rust crate's proto copy is up to date"

lint: $(STAMP)
	$(BIN)/ruff check client server tests examples
	$(BIN)/ruff format --check client server tests examples

typecheck: $(STAMP)
	$(BIN)/mypy client/python/turnstore server/turnstore tests examples

## proto: regenerate the Python code and .pyi stubs from proto/, and refresh the Rust crate's copy
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto \
		--python_out=$(GEN_DIR) --pyi_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
		$(PROTO_SRC)
	cp $(PROTO_SRC) $(RUST_PROTO_COPY)

proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	$(BIN)/python -m grpc_tools.protoc -I proto \
		--python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTO_SRC) && \
	for f in $$(cd $$tmp && find . -type f); do \
		cmp -s $$tmp/$$f $(GEN_DIR)/$$f || { echo "stale generated code: $(GEN_DIR)/$$f (run make proto)"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code is up to date"

## ts-proto-check (part of check): the npm package ships its own copy of the proto (loaded at
## run time, its types generated from it); fail when that copy differs from proto/.
## ts-proto-copy (part of proto): refresh the copy
TS_PROTO_COPY := client/typescript/$(PROTO_SRC)
.PHONY: ts-proto-check ts-proto-copy
check: ts-proto-check
proto: ts-proto-copy
ts-proto-check:
	@cmp -s $(PROTO_SRC) $(TS_PROTO_COPY) || { echo "stale proto copy: $(TS_PROTO_COPY) differs from $(PROTO_SRC) (run make proto)"; exit 1; }
	@echo "the TypeScript package's proto copy is up to date"
ts-proto-copy:
	cp $(PROTO_SRC) $(TS_PROTO_COPY)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
