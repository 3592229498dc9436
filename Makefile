# One-command entry points. Each target first installs what is missing
# (the pinned Rust toolchain and its x86_64-unknown-none target, and QEMU
# from the distribution's packages) and says what it installs.
#
#   make run    boot the kernel under QEMU (TCG, -cpu max), show its report,
#               then run the root task (kernel/roottask) in ring 3
#   make test   host tests, then QEMU integration tests
#   make gdb    boot paused with the gdbstub and print the gdb command
#   make bench  ptalloc benchmarks: criterion timings, the fragmentation
#               benchmark (target/bench/fragmentation.json), then a summary
#               table (also written as JSON to target/bench/ptalloc.json)
#   make lab    the policy lab (tools/src/lab.rs): every strategy, protection
#               and workload, host trace replays and in-kernel runs, then
#               the attack matrix and syscall costs of every object policy;
#               writes target/lab/results.json, results.md, comparison.md,
#               objects.md, plots and memory pictures (a few minutes).
#               TRACES=dir replays your own traces (tools/src/trace.rs
#               gives the format) as well
#   make memmap  boot as make run does, with the pageblock map dumped
#               (memmap=boot), and draw it: target/lab/memmap-after-boot.svg
#   make mutants  mutation testing of the host crates with cargo-mutants
#               (slow: about 40 minutes on 2 cores; not part of make test);
#               MUTANTS.md lists the mutants no test catches, and why
#
# Variables for run and gdb: APPEND="test=all", CPU=qemu64, MEM=4G, SMP=2,
# TIMEOUT=60 (seconds), ROOTTASK=path (an ELF of your own as the root task,
# README "Your own root task"; ROOTTASK=none boots without one). APPEND
# replaces the default "demo=pte pkfault=report".
# The runner refuses an APPEND over 1024 bytes and a MEM below 3M before
# starting QEMU (exit code 11 or 17, as when the kernel itself refuses).
# Variable for mutants: MUTANTS_CRATES="ptalloc pkeys boot shootdown" (the default).

TARGET  := x86_64-unknown-none
CPU     ?= max
MEM     ?= 128M
SMP     ?= 1
# make run's default shows the write-what-where demo, with key faults
# reported and stopped rather than fatal, so it ends with status 0.
APPEND  ?= demo=pte pkfault=report
TIMEOUT ?= 60
RUNNER  := cargo run --quiet --package tools --bin runner --

# The root task: the built-in one (kernel/roottask, a workspace of its own,
# built from its directory so that its .cargo/config.toml applies), or the
# ELF that ROOTTASK names, passed to QEMU as the first boot module (-initrd).
ROOTTASK_ELF := target/roottask/$(TARGET)/release/roottask
# The user test suite (kernel/roottask/src/bin/usertests.rs), run by the
# kernel once per test (roottask=suite; README "User tests").
USERTESTS_ELF := target/roottask/$(TARGET)/release/usertests
ROOTTASK     ?=
ifeq ($(ROOTTASK),)
INITRD       := --initrd $(ROOTTASK_ELF)
ROOTTASK_DEP := roottask
else ifeq ($(ROOTTASK),none)
INITRD       :=
ROOTTASK_DEP :=
else
INITRD       := --initrd "$(ROOTTASK)"
ROOTTASK_DEP :=
endif

.PHONY: run test gdb kernel roottask host-test loom-test qemu-test user-test deps toolchain qemu check bench mutants lab memmap

run: deps kernel $(ROOTTASK_DEP)
	$(RUNNER) --cpu $(CPU) --memory $(MEM) --smp $(SMP) --timeout $(TIMEOUT) --append "$(APPEND)" $(INITRD)

test: deps host-test loom-test qemu-test user-test

host-test: toolchain
	cargo test

# The loom models of ptalloc's per-CPU caches and of the shootdown hand-off
# (kernel/shootdown). --cfg loom swaps in loom's locks and atomics, so they
# build in their own target directory.
loom-test: toolchain
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --package ptalloc --test loom
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --package shootdown --test loom

qemu-test: deps kernel roottask
	cargo test --package qemu-tests

# The user-level test suite under the default protection, its output shown
# (each test in a process of its own; it ends with "user tests: N passed, M
# failed, K skipped"). qemu-test runs it under every policy and checks the
# counts.
user-test: deps kernel roottask
	$(RUNNER) --initrd $(USERTESTS_ELF) --append "roottask=suite" --timeout 300

gdb: deps kernel $(ROOTTASK_DEP)
	$(RUNNER) --gdb --cpu $(CPU) --memory $(MEM) --smp $(SMP) --append "$(APPEND)" $(INITRD)

kernel: toolchain
	cargo build --package kernel --target $(TARGET)

roottask: toolchain
	cd kernel/roottask && cargo build --release --target-dir ../../target/roottask

# Lints as CI would want them; not part of `make test`.
check: toolchain
	cargo fmt --all --check
	cargo clippy --workspace --exclude kernel --all-targets -- -D warnings
	cargo clippy --package kernel --target $(TARGET) -- -D warnings
	cd kernel/roottask && cargo fmt --check
	cd kernel/roottask && cargo clippy --release --target-dir ../../target/roottask -- -D warnings

# Host benchmarks of ptalloc (release build; a few minutes on 2 cores). The
# summary runs last and prints the table that the README quotes.
bench: deps kernel
	cargo bench --package ptalloc
	@echo "== in the kernel under QEMU (TCG): boot to the verification walk's pass, page-table churn through the real direct map, the flush limit"
	$(RUNNER) --append "test=page_table_churn" --timeout 120 | grep -E "verification walk|churn|flush cost|tlb flush limit|runner"
	@echo "== the same churn on every CPU at once (-smp 2, then 4): shootdown rounds per 1,000 page tables and per conversion batch, PKRS writes per map on each CPU"
	$(RUNNER) --smp 2 --append "test=concurrent_churn_on_every_cpu" --timeout 120 | grep -E "concurrent churn|runner"
	$(RUNNER) --smp 4 --append "test=concurrent_churn_on_every_cpu" --timeout 180 | grep -E "concurrent churn|runner"
	@if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then \
	  echo "== the same flush-limit measurement under KVM (timing only; no PKS there)"; \
	  $(RUNNER) --accel kvm --append "flushlimit=auto" --timeout 120 | grep -E "flush cost|tlb flush limit|runner"; \
	fi

# The policy lab: the matrix of strategies, protections and workloads
# (tools/src/lab.rs: adding a strategy is one table entry), then the attack
# matrix and the syscall costs of every object-protection policy
# (tools/src/attack_matrix.rs; the user suite is the root task's). The
# shipped traces are in tools/traces/; TRACES=dir adds a directory of yours.
TRACES ?=
lab: deps kernel roottask
	cargo run --quiet --package tools --bin lab -- $(if $(TRACES),--traces "$(TRACES)")

# The pageblock map after boot, as a picture. The kernel dumps it over its
# defmt log when its command line says memmap=boot (the format is in
# tools/src/memmap.rs).
memmap: deps kernel $(ROOTTASK_DEP)
	@mkdir -p target/lab
	$(RUNNER) --cpu $(CPU) --memory $(MEM) --smp $(SMP) --timeout $(TIMEOUT) --append "memmap=boot" $(INITRD) \
	    | cargo run --quiet --package tools --bin memmap -- --echo --out target/lab

# Mutation testing: cargo-mutants changes the code one mutant at a time and
# runs the crate's unit and integration tests against each. Settings (the
# simulator and the bare-metal entry stub left out, test arguments) are in
# .cargo/mutants.toml. Results per crate in target/mutants/CRATE/mutants.out
# (missed.txt lists the survivors); a summary line per crate at the end.
MUTANTS_CRATES ?= ptalloc pkeys boot shootdown
MUTANTS_TIMEOUT := 60

mutants: toolchain
	@cargo mutants --version >/dev/null 2>&1 || { \
	    echo "installing cargo-mutants (cargo install cargo-mutants --locked)"; \
	    cargo install cargo-mutants --locked || { \
	        echo "could not install cargo-mutants; run: cargo install cargo-mutants --locked"; exit 1; }; \
	}
	@failed=; for crate in $(MUTANTS_CRATES); do \
	    echo "== cargo mutants --package $$crate"; \
	    mkdir -p target/mutants/$$crate; \
	    cargo mutants --package $$crate --timeout $(MUTANTS_TIMEOUT) --output target/mutants/$$crate; \
	    status=$$?; \
	    case $$status in 0|2|3) ;; *) failed="$$failed $$crate"; esac; \
	done; \
	echo "== mutants: caught or timed out, over viable (listed survivors: MUTANTS.md)"; \
	for crate in $(MUTANTS_CRATES); do \
	    out=target/mutants/$$crate/mutants.out; \
	    [ -f $$out/caught.txt ] || { echo "$$crate: no results"; continue; }; \
	    caught=$$(wc -l < $$out/caught.txt); timeout=$$(wc -l < $$out/timeout.txt); \
	    missed=$$(wc -l < $$out/missed.txt); unviable=$$(wc -l < $$out/unviable.txt); \
	    echo "$$crate: $$caught caught, $$timeout timed out, $$missed missed, $$unviable unviable" \
	        | awk -v c=$$caught -v t=$$timeout -v m=$$missed \
	            '{ v = c + t + m; printf "%s: %.1f%%\n", $$0, v ? 100 * (c + t) / v : 0 }'; \
	done; \
	[ -z "$$failed" ] || { echo "cargo-mutants could not run on:$$failed (see target/mutants/CRATE/mutants.out/log)"; exit 1; }

deps: toolchain qemu

# rust-toolchain.toml pins the version; rustup installs it on first use, but
# the bare-metal target is added explicitly so the message says so.
toolchain:
	@command -v rustup >/dev/null || { \
	    echo "rustup is missing: install it from the Rust website, then rerun make"; exit 1; }
	@rustup target list --installed | grep -qx $(TARGET) || { \
	    echo "installing the Rust target $(TARGET) (rustup target add $(TARGET))"; \
	    rustup target add $(TARGET); }

qemu:
	@command -v qemu-system-x86_64 >/dev/null || { \
	    if ! command -v apt-get >/dev/null; then \
	        echo "qemu-system-x86_64 is missing: install QEMU 7.2 or newer with your package manager"; exit 1; \
	    fi; \
	    SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    echo "installing QEMU: $${SUDO:+$$SUDO }apt-get install -y qemu-system-x86"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq qemu-system-x86 >/dev/null || { \
	        echo "could not install QEMU; run: sudo apt-get install -y qemu-system-x86"; exit 1; }; \
	}
