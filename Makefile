# The two commands a newcomer needs:
#   make demo   - the demo cluster: 4 workers serving HTTP on 127.0.0.1:8080, showing who answered
#   make test   - every test: lints, Rust unit tests, the C ABI tests (also under ASan/UBSan and
#                 valgrind), Python, Node
CARGO ?= cargo
CC ?= cc
CFLAGS ?= -std=gnu11 -O2 -g -Wall -Wextra -Werror
PORT ?= 8080
LIB := target/release/librcluster.so

.PHONY: unsafe-count all lib demo test test-rust test-sanitize test-valgrind test-python test-node test-fuzz test-multihost lint header examples bench bench-full bench-python install doc clean

all: lib examples

lib:
	$(CARGO) build --release

target/examples/http_server: examples/c/http_server.c include/rcluster.h lib
	@mkdir -p target/examples
	$(CC) $(CFLAGS) -Iinclude $< -o $@ -Ltarget/release -Wl,-rpath,$(CURDIR)/target/release -lrcluster

examples: target/examples/http_server

demo: target/examples/http_server
	PORT=$(PORT) examples/c/demo.sh target/examples/http_server

DEBUG_LIB := $(CURDIR)/target/debug

test: lint test-rust test-sanitize test-valgrind test-python test-node test-fuzz test-multihost

test-rust:
	$(CARGO) test

# The C tests (ffi-tests/ and the demo) built with -fsanitize=address,undefined: any ASan,
# LeakSanitizer or UBSan report from any process of a run fails its test (tests/common/mod.rs).
test-sanitize:
	RCLUSTER_SANITIZE=1 $(CARGO) test --test ffi --test examples

# Whole cluster runs (the HTTP example, ffi-tests/messages.c) with the primary under memcheck.
test-valgrind:
	tests/valgrind.sh

# The bindings test against the debug library that test-rust built.
test-python:
	$(CARGO) build --lib --quiet
	RCLUSTER_LIB=$(DEBUG_LIB)/librcluster.so python3 -m pytest -q bindings/python/tests

# npm install also brings the devDependencies the Node drop-in tests run unchanged (express,
# fastify: test/node_channel.test.js).
test-node:
	$(CARGO) build --lib --quiet
	cd bindings/node && RCLUSTER_LIB_DIR=$(DEBUG_LIB) npm install --no-audit --no-fund --loglevel=error
	cd bindings/node && RCLUSTER_LIB_DIR=$(DEBUG_LIB) node --test test/

# Three hosts in network namespaces behind HAProxy, rolling deploys under load (needs root:
# says SKIPPED otherwise).
test-multihost:
	tests/multihost.sh 3

# A short deterministic libFuzzer run of every fuzz target (fuzz/run.sh; `fuzz/run.sh primary
# 600` fuzzes one target for 10 minutes).
test-fuzz:
	fuzz/run.sh

# Lines of code (not comments) with `unsafe`, and raw libc calls, outside src/ffi/ and outside
# the libc shim src/sys/raw/ too (the README's dependency section reports them).
unsafe-count:
	@code() { grep -rn --include=*.rs "$$1" src | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//'; }; \
	echo "lines with unsafe outside src/ffi/: $$(code unsafe | grep -v '^src/ffi/' | wc -l)"; \
	echo "lines with unsafe outside src/ffi/ and src/sys/raw/: $$(code unsafe | grep -v '^src/ffi/' | grep -v '^src/sys/raw/' | wc -l)"; \
	echo "raw libc calls outside src/ffi/: $$(grep -rnoE --include=*.rs 'libc::[a-z_0-9]+\(' src | grep -v '^src/ffi/' | wc -l)"; \
	echo "raw libc calls outside src/ffi/ and src/sys/raw/: $$(grep -rnoE --include=*.rs 'libc::[a-z_0-9]+\(' src | grep -v '^src/ffi/' | grep -v '^src/sys/raw/' | wc -l)"

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Requests/s of every policy against plain SO_REUSEPORT workers and node:cluster (needs wrk).
bench:
	bench/run.sh

# Every row of the benchmark table (handoff, keep-alive, IPC sizes, startup, balance, memory)
# with its peer, ratio and target, then the handoff at 2 to 512 workers (bench/scale.sh):
# about 3 minutes.
bench-full:
	bench/full.sh
	bench/scale.sh

# The WSGI example against gunicorn's sync workers (needs wrk and gunicorn), and Python IPC echo.
bench-python:
	bench/run_python.sh
	RCLUSTER_LIB=$(CURDIR)/target/release/librcluster.so PYTHONPATH=bindings/python python3 bench/py_ipc_echo.py 3
	node bench/ipc_echo.js node 3

# make install [PREFIX=/usr/local] [DESTDIR=] [PROFILE=release]: the shared library with its
# soname (librcluster.so.<ABI>), the static library, the header and rcluster.pc.
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
PROFILE ?= release
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
ABI := $(shell sed -n 's/^\#define RCLUSTER_ABI_VERSION //p' include/rcluster.h)

install:
	$(CARGO) build --lib $(if $(filter release,$(PROFILE)),--release,)
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 target/$(PROFILE)/librcluster.so $(DESTDIR)$(LIBDIR)/librcluster.so.$(VERSION)
	ln -sf librcluster.so.$(VERSION) $(DESTDIR)$(LIBDIR)/librcluster.so.$(ABI)
	ln -sf librcluster.so.$(ABI) $(DESTDIR)$(LIBDIR)/librcluster.so
	install -m 644 target/$(PROFILE)/librcluster.a $(DESTDIR)$(LIBDIR)/librcluster.a
	install -m 644 include/rcluster.h $(DESTDIR)$(PREFIX)/include/rcluster.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@VERSION@|$(VERSION)|' rcluster.pc.in \
		> $(DESTDIR)$(LIBDIR)/pkgconfig/rcluster.pc

# The API reference: the crate docs (the Rust API and the C ABI layer) in target/doc/.
doc:
	$(CARGO) doc --no-deps

# Regenerates the checked-in header after a change to src/ffi (tests/header.rs checks it).
header:
	RCLUSTER_UPDATE_HEADER=1 $(CARGO) build

clean:
	$(CARGO) clean
