# The two commands a newcomer needs:
#   make demo   - the demo cluster: 4 workers serving HTTP on 127.0.0.1:8080, showing who answered
#   make test   - every test: lints, Rust unit tests, the C ABI tests, Python, Node
CARGO ?= cargo
CC ?= cc
CFLAGS ?= -std=gnu11 -O2 -g -Wall -Wextra -Werror
PORT ?= 8080
LIB := target/release/librcluster.so

.PHONY: all lib demo test test-rust test-python test-node lint header examples bench bench-python clean

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

test: lint test-rust test-python test-node

test-rust:
	$(CARGO) test

# The bindings test against the debug library that test-rust built.
test-python:
	$(CARGO) build --lib --quiet
	RCLUSTER_LIB=$(DEBUG_LIB)/librcluster.so python3 -m pytest -q bindings/python/tests

test-node:
	$(CARGO) build --lib --quiet
	cd bindings/node && RCLUSTER_LIB_DIR=$(DEBUG_LIB) npm install --no-audit --no-fund --loglevel=error
	cd bindings/node && RCLUSTER_LIB_DIR=$(DEBUG_LIB) node --test test/

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Requests/s of every policy against plain SO_REUSEPORT workers and node:cluster (needs wrk).
bench:
	bench/run.sh

# The WSGI example against gunicorn's sync workers (needs wrk and gunicorn), and Python IPC echo.
bench-python:
	bench/run_python.sh
	RCLUSTER_LIB=$(CURDIR)/target/release/librcluster.so PYTHONPATH=bindings/python python3 bench/py_ipc_echo.py 3
	node bench/ipc_echo.js node 3

# Regenerates the checked-in header after a change to src/ffi (tests/header.rs checks it).
header:
	RCLUSTER_UPDATE_HEADER=1 $(CARGO) build

clean:
	$(CARGO) clean
