# Build and test pipeline for Visor. Works on a fresh Debian 12 machine that
# has Rust and root (or sudo) but no Elixir: `make test` installs the rest.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

SEEDS ?= 1000
VOPR_FLAGS ?=

# sudo only when we are not root (CI and dev machines run as root).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test rust-test elixir-test soak model-check model-check-membership demo bench bench-pipeline bench-catchup bench-state bench-groups bench-memory fmt fresh-app

# Idempotent: installs Debian's Elixir/OTP only when a tool is missing.
# Visor needs no hex packages.
deps:
	@if ! command -v elixir >/dev/null || ! command -v mix >/dev/null || ! command -v erl >/dev/null; then \
	  echo "==> installing elixir and erlang from apt"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q elixir erlang-dev erlang-nox; \
	fi
	@# Distributed :peer tests need the port mapper; -daemon is a no-op if it runs.
	@epmd -daemon

test: deps rust-test elixir-test

# visor_nif links rustler, whose test harness fails to link on Linux (the
# NIF symbols exist only inside a running BEAM): its Cargo.toml sets
# `test = false`, so cargo test skips it while clippy still checks it; Elixir's tests exercise it.
rust-test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

# Tests that fail are run once more (`mix test --failed`): those that pass
# then are named FLAKY at the end of the log, and the run passes; any that
# fails twice fails it (docs/testing.md, "Flaky tests"). Only a run that
# finished with failed tests is retried (its log names them): one that
# could not run its tests fails at once.
elixir-test: deps
	mix format --check-formatted
	mix compile --warnings-as-errors
	mix test 2>&1 | tee _build/mix-test.log || { \
	  grep -q "the suite's failures, repeated" _build/mix-test.log && \
	  echo "==> mix test failed: running its failed tests once more" && \
	  mix test --failed --trace && \
	  echo "==> FLAKY: the tests just run failed once and then passed (listed above under 'the suite's failures'): fix them"; \
	}

# VOPR_FLAGS=--dead-minority: up to n - quorum replicas never come back;
# VOPR_FLAGS=--membership: random membership changes while the faults run.
# The soak profile (Cargo.toml) is release with whole-program optimization.
soak:
	cargo run --profile soak -p vsr_sim --bin vopr -- --seeds $(SEEDS) $(VOPR_FLAGS)

# Three local nodes run the README's Cache; the primary's node is SIGKILLed,
# a new primary takes over with the state intact, and the killed node is
# restarted, rejoins and catches up; then a member lost for good is
# replaced by a new node through a membership change (scripts/demo.exs).
demo: deps
	mix run scripts/demo.exs

# Visor (memory and disk mode) against Mnesia on a local 3-node cluster,
# with the round trip and fdatasync latency as floors; about 70 s. Prints
# a table and writes bench/results/<time>.json (bench/bench.exs).
bench: deps
	mix run bench/bench.exs

# One process pipelining commits against 64 synchronous callers, in one
# run (bench/bench.exs pipeline), about 25 s.
bench-pipeline: deps
	mix run bench/bench.exs pipeline

# A disk-mode replica whose data_dir is wiped catches up with a 100 MB state
# (BENCH_CATCHUP_MB); bench/catchup.exs, about 10 s.
bench-catchup: deps
	mix run bench/catchup.exs

# RSS and log length per node while 1 MB commands commit (memory mode, 3
# local nodes): BENCH_MEMORY_COMMANDS (default 2,000, about 100 s),
# checkpoint_bytes BENCH_CHECKPOINT_MB (default 64; 0: by ops alone);
# bench/memory.exs, writes bench/results/memory-<time>.json.
bench-memory: deps
	mix run bench/memory.exs

# What a checkpoint of a large state costs the commits around it: a 100 MB
# map (1M entries) and a 100 MB binary on 3 local nodes, normal commit p99
# against the p99 of commits overlapping a checkpoint, and memory per node
# (BENCH_STATE_KINDS, BENCH_STATE_ENTRIES, BENCH_STATE_MB, ... for a quick
# run). Writes bench/results/state-<time>.json (bench/state.exs).
bench-state: deps
	mix run bench/state.exs

# What many groups cost (docs/design/many-groups.md, step 0): BENCH_GROUPS
# keyed groups (default 10,000; BENCH_KIND=modules: one generated module
# each) on 3 local nodes;
# form time, a BENCH_IDLE_S idle window (default 60: view changes, CPU,
# distribution messages and memory per node), 256 callers over many groups
# against one, and failover after a SIGKILL. Prints a table and writes
# bench/results/groups-<time>.json (bench/groups.exs).
bench-groups: deps
	mix run bench/groups.exs

fmt:
	cargo fmt --all
	mix format

# A fresh `mix new` app depending on Visor by path, built with its own
# CARGO_TARGET_DIR (a full engine build: minutes), runs three nodes and
# then a `mix release` of three (scripts/fresh_app_check.sh).
fresh-app: deps
	scripts/fresh_app_check.sh

# The exhaustive model check (native/vsr_model, docs/testing.md) deeper than
# `cargo test`'s: view changes whole, then every kind of fault at once up
# to MODEL_STATES states (breadth-first: every state up to the depth reached).
MODEL_STATES ?= 2000000
model-check:
	cargo run --release -p vsr_model --bin model_check -- --timeouts 2
	cargo run --release -p vsr_model --bin model_check -- --all --states $(MODEL_STATES)

# The membership cases of the model check (Bounds::membership, docs/testing.md)
# deeper than `cargo test`'s, each up to MODEL_STATES states; grow-shrink
# and one-two-one are not in `cargo test` at all.
MEMBERSHIP_CASES ?= replace genesis-host learner-restart grow-shrink one-two-one
model-check-membership:
	for c in $(MEMBERSHIP_CASES); do \
	  cargo run --release -p vsr_model --bin model_check -- --case $$c --states $(MODEL_STATES); \
	done
