# Tollgate: the two commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
VENV := tests/python/.venv
PY := $(VENV)/bin/python

## Development CA and server certificate in certs/ (never committed).
certs:
	scripts/gen-certs.sh certs

.PHONY: certs run test deps sys-deps py-deps build release unit integration sdk bench bench-criterion check clean

## Start a working gateway: default config, embedded store in data/, in-process mock provider.
run: sys-deps
	@scripts/run.sh

## Install what the tests need, then run every test: unit, integration, and the OpenAI SDK.
test: deps
	$(CARGO) build --bins
	$(CARGO) test --no-fail-fast -- --test-threads=2
	$(PY) -m pytest -q tests/python
	$(MAKE) fuzz FUZZ_SECS=$(TEST_FUZZ_SECS)

deps: sys-deps py-deps

# Pingora's zlib-ng build needs cmake (and a C compiler); install them when missing.
sys-deps:
	@if ! command -v cmake >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then \
		echo "installing cmake and a C compiler"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake build-essential >/dev/null; \
	fi

py-deps: $(VENV)/.installed
$(VENV)/.installed: tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

build: sys-deps
	$(CARGO) build

release: sys-deps
	$(CARGO) build --release

## Validate conf/tollgate.toml.
check: build
	target/debug/tollgate check --config conf/tollgate.toml

## Fuzz every parser and translator for FUZZ_SECS seconds each (docs/fuzzing.md); fails on
## a crash. `make test` runs it for TEST_FUZZ_SECS per target.
FUZZ_SECS ?= 60
TEST_FUZZ_SECS ?= 20
.PHONY: fuzz
fuzz: sys-deps
	scripts/fuzz.sh $(FUZZ_SECS)

## Load benchmark: the mock directly vs bare Pingora vs the gateway; writes benches/results.md.
## (The criterion micro-benchmarks are `make bench-criterion`.)
bench: sys-deps
	$(CARGO) bench --bench load

bench-criterion:
	$(CARGO) bench --bench sse --bench rewrite

## Soak: SOAK_SECS (default 180) of mixed traffic, reloads and upstream faults on loopback;
## samples RSS and fds, writes benches/soak.md. See docs/operations.md.
.PHONY: soak
soak: sys-deps
	$(CARGO) bench --bench soak

clean:
	$(CARGO) clean
	rm -rf $(VENV)
