# callfs developer entry points. Every recipe runs under bash with -eu -o pipefail: the first
# failing command fails the target.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:

CARGO ?= cargo
PROMTOOL ?= promtool
AMTOOL ?= amtool
# extra arguments for the test binaries, e.g. make test TEST_ARGS='--nocapture'
TEST_ARGS ?=
# seconds each cargo-fuzz target runs under make fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := endpoint path
# how long make soak runs: seconds, or a number with s, m or h (10m)
DURATION ?= 10m

.PHONY: build run lint check test fuzz soak deps deps-build check-alerts check-alertmanager bench bench-disk bench-proxy bench-s3 bench-scale cluster cluster-down

# Everything `make test` needs: the build libraries plus PostgreSQL, Prometheus and Alertmanager.
deps:
	scripts/ensure-deps.sh test

# Only what compiling and running a node needs (pkg-config, OpenSSL and libpq headers): a SQLite
# node uses no database server and no monitoring tools.
deps-build:
	scripts/ensure-deps.sh build

build:
	$(CARGO) build --release

run: deps-build build
	scripts/dev-config.sh
	exec target/release/callfs server --config .dev/config.yaml

# Formatting, clippy over the whole workspace, and the dependency policy of deny.toml (licenses, bans,
# sources; advisories need a network database and stay out). cargo-deny is installed when missing.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	CARGO=$(CARGO) scripts/ensure-cargo-deny.sh
	$(CARGO) deny check --hide-inclusion-graph bans licenses sources

# The edit-test loop: formatting, clippy, unit tests and the SQLite half of the API suite, in debug
# mode (no release build, no PostgreSQL, no Prometheus). `make test` remains what CI runs.
check: deps-build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --lib --bins -- --test-threads=2 $(TEST_ARGS)
	$(CARGO) test --test api sqlite:: -- --test-threads=2 $(TEST_ARGS)

# Unit + black-box tests (PostgreSQL via scripts/with-postgres.sh; tests/monitoring.rs needs
# prometheus), then the alert rules and the Alertmanager configuration.
test: deps lint
	mkdir -p target
	scripts/with-postgres.sh $(CARGO) test --release --workspace --no-fail-fast -- --test-threads=2 $(TEST_ARGS) \
	  2>&1 | tee target/test-output.log
	$(MAKE) --no-print-directory check-alerts check-alertmanager
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i } } \
	  END { printf "%d passed, %d failed\n", p, f }' target/test-output.log

check-alerts:
	$(PROMTOOL) check rules cluster/alerts.yml
	$(PROMTOOL) test rules cluster/alerts_test.yml
	$(PROMTOOL) check config cluster/prometheus.yml

check-alertmanager:
	$(AMTOOL) check-config cluster/alertmanager.yml
	$(AMTOOL) config routes test --config.file=cluster/alertmanager.yml --verify.receivers=pager \
	  severity=critical alertname=CallFSServiceDown instance=127.0.0.1:8441
	$(AMTOOL) config routes test --config.file=cluster/alertmanager.yml --verify.receivers=ticket \
	  severity=warning alertname=CallFSHighLatency

# callfs against nginx and dufs on tmpfs (when /dev/shm has room), plus the PostgreSQL and two-node
# rows (a private PostgreSQL from scripts/with-postgres.sh); bench-disk runs the same on disk.
bench: build
	scripts/with-postgres.sh bench/run.sh

bench-disk: build
	BENCH_TMPDIR=/var/tmp BENCH_RESULTS=bench/results-disk.md scripts/with-postgres.sh bench/run.sh

bench-proxy: build
	scripts/with-postgres.sh bench/proxy.sh

bench-s3: build
	scripts/ensure-s3.sh
	bench/s3.sh

# One directory filled to 10k and 100k files (BENCH_SCALE_MAX=1000000 adds 1M), then listed.
bench-scale: build
	bench/scale.sh

cluster: build
	cluster/start.sh

cluster-down:
	cluster/stop.sh

# Fuzz the request classifier and the path canonicaliser (fuzz/, a crate outside the workspace),
# FUZZ_SECONDS each. cargo-fuzz passes nightly -Z flags: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. Findings land in fuzz/artifacts/<target>/ and fail the run.
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -dict=fuzz/routes.dict \
	    -print_final_stats=1; \
	done

# Soak (not part of make test): three nodes on one throw-away PostgreSQL, a journaled mixed workload
# (create, overwrite, read, rename, directory move, relocation, delete) through all of them for
# DURATION, a node SIGKILLed and restarted every 20 s, PostgreSQL restarted once. Then every
# acknowledged write must read back by SHA-256, every acknowledged delete be gone, callfs fsck be
# clean on every node and no temp file remain. Prints a summary of the operations.
soak: deps build
	scripts/with-postgres.sh env CALLFS_SOAK_DURATION=$(DURATION) \
	  $(CARGO) test --release --test soak -- --ignored --nocapture --test-threads=1
