# rxen: a Xen-style paravirtualization stack in Rust.
#
#   make demo           boot the Xen test host, start guests, show them working
#   make test           everything CI runs: clippy, unit tests, loopback tests, fuzz smoke, Xen host scenarios
#   make guest-kernel   build (or reuse) the project's patched Linux 6.12 guest kernel (kernel-patches/)
#
# Slow artifacts (Debian packages, dom0 root, guest images) live outside the
# clone, in $(RXEN_CACHE), keyed by package versions and input hashes.

CARGO       ?= cargo
RXEN_CACHE  ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/rxen
export RXEN_CACHE

.PHONY: all build deps test test-unit test-fuzz test-xen guest-kernel xen-host demo bench fuzz clippy clean

all: build

deps:
	./scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests, C differential tests, loopback multi-process tests. The Xen
# host scenarios are left to test-xen, which builds the host first.
test-unit: deps
	$(CARGO) test --workspace --exclude xen-scenarios

# Short, bounded fuzzing runs of every fuzz target (regression, not discovery).
test-fuzz: deps
	./scripts/fuzz.sh smoke

# Build (or reuse from the cache) the project's guest kernel: Debian's
# Linux 6.12 source with kernel-patches/series/ applied, Rust enabled.
guest-kernel: deps
	./kernel-patches/build.sh

# Build (or reuse from the cache) the Xen test host: QEMU, Xen 4.17, dom0,
# guests (Debian's kernels and guest-kernel's, which its build.sh builds).
xen-host: deps
	./tests/xen-host/build.sh

# Scenarios on the real Xen test host, booted under QEMU.
test-xen: xen-host
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release -p xen-scenarios -- --test-threads=1 --nocapture

# Lints first: the workspace denies undocumented unsafe blocks, and only
# clippy checks that.
test: clippy test-unit test-fuzz test-xen

demo: xen-host
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p xen-harness --bin rxen-demo

# Loopback data-path benchmarks, then daemons and backends side by side
# with their C peers on the Xen test host.
bench: xen-host
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p rxen-bench
	$(CARGO) bench -p xen-scenarios --bench xenstored
	$(CARGO) bench -p xen-scenarios --bench blk
	$(CARGO) bench -p xen-scenarios --bench kernel_blk
	$(CARGO) bench -p xen-scenarios --bench net

fuzz: deps
	./scripts/fuzz.sh long

clean:
	$(CARGO) clean
