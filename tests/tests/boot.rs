//! Boot, consoles, command line, faults and the runner's verdicts, each
//! checked by booting the kernel under QEMU (TCG).

use qemu_tests::{Run, boot, qemu};
use std::time::Duration;
use tools::Outcome;

/// What `test=all` reports under each protection mechanism: PKS tests skip
/// without PKS, the CR0.WP window test skips without `ro`. Update these
/// when adding kernel tests.
const ALL_UNDER_PKS: &str = "tests: 66 passed, 0 failed, 7 skipped";
const ALL_UNDER_RO: &str = "tests: 58 passed, 0 failed, 15 skipped";
const ALL_UNDER_NONE: &str = "tests: 55 passed, 0 failed, 18 skipped";

#[test]
fn boots_with_pks_and_reports() {
    let run = boot(qemu(""));
    run.expect_outcome(Outcome::Success).expect_console(&[
        "pks-kernel",
        "PKS: present, CR4.PKS on, PKRS 0x000002a8 (key 1 ro, key 2 ro, key 3 ro, key 4 ro)",
        "+PKS",
        "cpu protections: SMEP on, SMAP on, UMIP on, NX on, CR0.WP on",
        "protection policy: ptprot=pks (auto: PKS present), write windows by PKRS",
        "key 1: page tables, ReadOnly outside windows",
        "key 2: allocator metadata, ReadOnly outside windows",
        "key 3: capability tables, ReadOnly outside windows",
        "key 4: thread control blocks, ReadOnly outside windows",
        "object protection: protect=pt,meta (classes with keys of their own; none under ptprot=none)",
        "page-table policy: ptstrategy=freetype ptfallback=fail",
        "sealed records: pageblock protections, single page-table pages (0 in 0 of 128 mixed-pageblock slots) and early page tables, 12 pages with the metadata key; 0 pageblocks disagree with the allocator's metadata",
        "pk fault policy: pkfault=panic",
        "direct map: 128 MiB at 0xffff800000000000: 0 x 1 GiB + 64 x 2 MiB pages, 2 page tables",
        "early page tables: 10 recorded",
        "pageblocks: unmovable/mapped=62 unmovable/pkey1=1",
        // The limit itself depends on the host's timing.
        "tlb flush limit: ",
        " pageblocks, measured at boot (INVLPG ",
        // The 2 MiB splits at boot follow the image's size (1 while it
        // ended below 4 MiB, 2 since): the rest is pinned.
        "allocator counters: 1 conversions in 1 batches, 1 flushes, splits 1G->2M 0 2M->4K ",
        ", reserve 8 (low-water 7), compactions 0 (0 failed, 0 pages moved), single-page fallbacks 0 (0 live)",
        "early page tables reprotected: 10 (splits 1G->2M 0, 2M->4K 1)",
        "kernel image W^X: ",
        " pages r-x (text), ",
        "direct-map alias read-only for ",
        // The table and leaf counts follow the image's size (11 tables
        // while it ended below 4 MiB, 13 since).
        "verification walk: PASS: ",
        " page-table frames, ",
        " leaf mappings, 21 aliases of protected frames, all protected; no stray keys; registers as required",
        "register check: CR0.WP set, PKRS 0x000002a8 (key 1 ro, key 2 ro, key 3 ro, key 4 ro) (the default, no window open), CR4 pinned bits 0x1300000 (PKS SMEP SMAP); checked at window close, exception entry and exit, and this walk: held",
        "boot complete",
    ]);
    // Boot time to the walk's pass is measured by the runner, as the
    // arrival of that line (the figure `make bench` and the runner print):
    // after the first line, before the last.
    let walk = run.0.console_line_at("verification walk: PASS");
    let first = run.0.console_line_at("pks-kernel");
    let last = run.0.console_line_at("boot complete");
    assert!(
        matches!((first, walk, last), (Some(f), Some(w), Some(l)) if f <= w && w <= l),
        "first line at {first:?}, walk passed at {walk:?}, last line at {last:?}"
    );
    // COM2's defmt frames arrive decoded.
    run.expect_log("descriptor tables loaded")
        .expect_log("flush cost, 1 pageblocks: INVLPG each ")
        .expect_log("boot: 127 MiB usable, PKS true");
}

#[test]
fn all_kernel_tests_pass() {
    let run = boot(qemu("test=all"));
    run.expect_outcome(Outcome::Success)
        .expect_all_tests_passed(45)
        .expect_console(&[ALL_UNDER_PKS])
        .expect_no_console("boot complete")
        // One window around 512 writes: two PKRS writes.
        .expect_log("pkrs writes for a batch of 512 page-table-key writes: 2")
        .expect_log("pk fault (pkfault=report): write of")
        .expect_log("denied by key 1 at RIP")
        // The churn: over 10,000 page-table pages through the real direct
        // map, no 4 KiB shattering, one window per map. The flush count
        // depends on what earlier tests left in the allocator; the kernel
        // test itself checks it against the goal (at most 2 per 1,000).
        .expect_log("churn: 10021 page-table pages allocated and freed, ")
        .expect_log(" 0 2M->4K splits, 2 PKRS writes per map");
    // The walk at the peak sees the churn's tables and the kernel's (how
    // many of those depends on what earlier tests left mapped and on the
    // image's layout): no violation, and about 10,000 + a few dozen.
    let peak = run
        .0
        .log
        .iter()
        .find_map(|line| {
            let rest = line
                .split("churn: verification walk at the peak: ")
                .nth(1)?;
            let (tables, rest) = rest.split_once(" page tables, ")?;
            Some((
                tables.parse::<u64>().ok()?,
                rest.starts_with("0 violations"),
            ))
        })
        .unwrap_or_else(|| panic!("no walk at the churn's peak\n{}", run.0.transcript()));
    assert!(
        (10_021..=10_100).contains(&peak.0) && peak.1,
        "the walk at the churn's peak: {peak:?}"
    );
    // Tests that end the machine run only when named.
    let names: Vec<_> = run
        .test_results()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("deliberate_")),
        "{names:?}"
    );
}

#[test]
fn a_fixed_flush_limit_replaces_the_measurement() {
    // Boot's conversion flushes by INVLPG, and the suite runs with that
    // limit (conversions over split 4 KiB entries still reload CR3).
    boot(qemu("flushlimit=512 test=all"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "tlb flush limit: 512 pageblocks (flushlimit=512); flushes so far: 1 by INVLPG, 3 full",
            ALL_UNDER_PKS,
        ])
        .expect_no_log("flush cost");
    // Without protection nothing else flushes the TLB: the conversion's
    // own flush must drop the old translation, by INVLPG or by CR3 reload.
    for limit in ["0", "512"] {
        boot(qemu(&format!(
            "ptprot=none flushlimit={limit} test=a_conversion_drops_the_old_translation"
        )))
        .expect_outcome(Outcome::Success)
        .expect_all_tests_passed(1);
    }
    // And by CR3 reload only.
    boot(qemu("flushlimit=0"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "tlb flush limit: 0 pageblocks (flushlimit=0); flushes so far: 0 by INVLPG, 4 full",
        ]);
}

#[test]
fn cpu_without_pks_falls_back_to_read_only_policy() {
    let run = boot(qemu("test=all").cpu("qemu64"));
    run.expect_outcome(Outcome::Success).expect_console(&[
        "PKS: absent",
        "-PKS",
        "protection policy: ptprot=ro (auto: PKS absent), write windows by CR0.WP",
        "verification walk: PASS",
        "SMEP off (absent)",
        "test read_only_window_toggles_write_protect ... ok",
        "test batch_of_writes_costs_two_pkrs_writes ... skipped (needs PKS",
        ALL_UNDER_RO,
    ]);
}

#[test]
fn read_only_policy_on_a_pks_cpu_leaves_pks_off() {
    boot(qemu("ptprot=ro test=all"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "PKS: present, not enabled (the policy does not use it)",
            "protection policy: ptprot=ro, write windows by CR0.WP",
            ALL_UNDER_RO,
        ]);
}

#[test]
fn pks_policy_on_cpu_without_pks_is_a_clear_error() {
    boot(qemu("ptprot=pks").cpu("qemu64"))
        .expect_outcome(Outcome::BadCommandLine)
        .expect_console(&[
            "kernel command line rejected: ptprot=pks needs PKS, and this CPU has none",
        ])
        .expect_no_console("boot complete");
}

#[test]
fn explicit_policies_are_reported() {
    boot(qemu("ptprot=none pkfault=report test=all"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "protection policy: ptprot=none, write windows by nothing (no protection)",
            "pk fault policy: pkfault=report",
            // Without protection no window flushes the TLB: this test sees
            // a move of a user frame that leaves its old translation behind
            // (it fails with the move's INVLPG removed).
            "test a_moved_page_drops_its_old_translation ... ok",
            ALL_UNDER_NONE,
        ]);
}

#[test]
fn write_what_where_on_a_live_pte_faults_under_pks() {
    boot(qemu("demo=pte pkfault=report"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "demo: target: the entry mapping 0xffffff0000000000",
            "(a page table with key 1)",
            "demo: the write faulted: write of 0xffffffff8",
            "denied by key 1 (page tables)",
            "demo: the entry is unchanged (0x0): page tables are protected",
            "verification walk: PASS",
            "boot complete",
        ]);
    boot(qemu("demo=pte"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "protection key fault: write of",
            "denied by key 1 (page tables)",
            "fault policy: pkfault=panic",
        ]);
}

#[test]
fn write_what_where_on_a_live_pte_succeeds_without_protection() {
    boot(qemu("demo=pte ptprot=none"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "(a page table with key 0)",
            "demo: the write landed: 0xffffff0000000000 now maps the secret's frame, read-write; it reads \"kernel secret: 0123456789abcdef!\"",
            "page tables are NOT protected",
        ]);
}

#[test]
fn empty_split_reserve_at_boot_is_a_clear_error() {
    // Reprotecting the early tables must split the direct map; with the
    // reserve forced empty it stops with the reason, never with an
    // unprotected table.
    boot(qemu("inject=empty-reserve"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "fault injection: the split reserve gives nothing to direct-map splits",
            "boot: cannot reprotect the early page tables: protecting frame 0x",
            "in the direct map: NoSplitPage",
        ])
        .expect_no_console("boot complete");
}

#[test]
fn stray_write_under_panic_policy_reports_the_key() {
    let run = boot(qemu("test=deliberate_pk_fault"));
    run.expect_outcome(Outcome::KernelFailure).expect_console(&[
        "test deliberate_pk_fault ... FAILED",
        "!!! kernel fault: page fault (#PF, vector 14)",
        "error code: 0x23 (present, write, supervisor, PK (protection key))",
        "protection key fault: write of 0xffffffff8",
        "denied by key 1 (page tables) at RIP 0xffffffff8",
        "fault policy: pkfault=panic",
        "PKRS of the faulting code: 0x000002a8 (key 1 ro, key 2 ro, key 3 ro, key 4 ro)",
    ]);
}

#[test]
fn stray_write_under_report_policy_without_recovery_point_stops_the_machine() {
    boot(qemu("pkfault=report test=deliberate_pk_fault"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "denied by key 1 (page tables)",
            "fault policy: pkfault=report, but this access has no recovery point, so the machine stops",
        ]);
}

#[test]
fn stray_write_under_soft_policy_is_logged_and_allowed() {
    boot(qemu("pkfault=soft test=deliberate_pk_fault"))
        .expect_outcome(Outcome::Success)
        .expect_console(&["test deliberate_pk_fault ... ok"])
        .expect_log("pk fault (pkfault=soft): write of")
        .expect_log("allowed (logged once per site)");
}

#[test]
fn bad_command_lines_are_rejected_with_the_reason() {
    let cases = [
        ("quiet=1", "unknown option 'quiet'"),
        (
            "ptprot=maybe",
            "option 'ptprot' does not accept 'maybe'; accepted values: pks, ro, none, auto",
        ),
        (
            "pkfault=",
            "option 'pkfault' does not accept ''; accepted values: panic, report, soft",
        ),
        ("verbose", "'verbose' is not of the form key=value"),
        (
            "ptprot=pks ptprot=ro",
            "option 'ptprot' is given more than once",
        ),
        ("test=Bad-Name", "option 'test' does not accept 'Bad-Name'"),
        (
            "flushlimit=513",
            "option 'flushlimit' does not accept '513'; accepted values: auto, or 0-512 pageblocks",
        ),
        (
            "test=no_such_test",
            "option 'test' names unknown test 'no_such_test'; known tests:",
        ),
        (
            &format!("test={}", ["a"; 17].join(",")),
            "option 'test' lists 17 tests; at most 16 can be named (test=all runs every test)",
        ),
        (
            &format!("test={}", "n".repeat(65)),
            "option 'test' names a test of 65 bytes (",
        ),
    ];
    for (append, reason) in cases {
        boot(qemu(append))
            .expect_outcome(Outcome::BadCommandLine)
            .expect_console(&[&format!("kernel command line rejected: {reason}")])
            .expect_no_console("boot complete");
    }
}

#[test]
fn overlong_command_lines_are_refused_before_qemu_starts() {
    // 1024 bytes is the kernel's limit, and boots.
    let longest = format!("{:<1024}", "ptprot=pks");
    boot(qemu(&longest))
        .expect_outcome(Outcome::Success)
        .expect_console(&["boot complete"]);
    // Longer lines never reach QEMU: from about 4 KiB QEMU's loader would
    // write them over hvm_start_info, from about 24 KiB the guest hangs.
    for len in [1025, 4 << 10, 24 << 10, 128 << 10] {
        let line = "x".repeat(len);
        let run = boot(qemu(&line));
        run.expect_outcome(Outcome::BadCommandLine);
        let refusal = run
            .0
            .refusal
            .as_ref()
            .unwrap_or_else(|| panic!("{len} bytes: QEMU ran\n{}", run.0.transcript()));
        assert_eq!(run.0.status, None, "{len} bytes: no QEMU status");
        assert_eq!(refusal.status(), 37, "{len} bytes");
        assert_eq!(
            refusal.to_string(),
            "kernel command line rejected: command line is longer than 1024 bytes",
            "{len} bytes"
        );
        assert_eq!(refusal.detail(), format!("{len} bytes given"));
    }
}

#[test]
fn control_characters_are_escaped_in_every_echo() {
    // An ANSI "clear screen", a backspace and DEL in a rejected word: the
    // echo shows them escaped, and no control character reaches COM1.
    for (append, shown) in [
        (
            "\u{1b}[2J",
            "kernel command line rejected: '\\x1b[2J' is not of the form key=value",
        ),
        (
            "ptprot=pk\u{8}s",
            "option 'ptprot' does not accept 'pk\\x08s'",
        ),
        ("a\u{7f}=1", "unknown option 'a\\x7f'"),
        (
            "demo=\u{202e}pte",
            "option 'demo' does not accept '\\u{202e}pte'",
        ),
    ] {
        let run = boot(qemu(append));
        run.expect_outcome(Outcome::BadCommandLine)
            .expect_console(&[shown]);
        assert!(
            !run.0.console.chars().any(|c| c.is_control() && c != '\n'),
            "a control character reached the console for {append:?}\n{}",
            run.0.transcript()
        );
    }
    // A tab separates words; the boot report's echo of the line shows it.
    boot(qemu("ptprot=pks\tdemo=none"))
        .expect_outcome(Outcome::Success)
        .expect_console(&["command line: \"ptprot=pks\\x09demo=none\""]);
}

#[test]
fn fault_policy_is_marked_as_not_applying_without_keys() {
    boot(qemu("ptprot=ro pkfault=report"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "pk fault policy: pkfault=report (does not apply: ptprot=ro uses no protection keys",
        ]);
    boot(qemu("ptprot=none"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "pk fault policy: pkfault=panic (does not apply: ptprot=none protects nothing",
        ]);
    boot(qemu("ptprot=pks pkfault=report"))
        .expect_outcome(Outcome::Success)
        .expect_console(&["pk fault policy: pkfault=report\n"]);
}

#[test]
fn stack_overflow_hits_the_guard_page() {
    boot(qemu("test=deliberate_stack_overflow"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "!!! kernel fault: page fault (#PF, vector 14)",
            "error code: 0x2 (not-present, write, supervisor)",
            "the address is the boot stack's guard page: kernel stack overflow",
            "exit status 35 (failure)",
        ]);
}

#[test]
fn page_fault_gives_a_full_report_and_failure() {
    let run = boot(qemu("test=deliberate_page_fault"));
    run.expect_outcome(Outcome::KernelFailure).expect_console(&[
        "test deliberate_page_fault ... FAILED",
        "!!! kernel fault: page fault (#PF, vector 14)",
        "during test deliberate_page_fault",
        "error code: 0x2 (not-present, write, supervisor)",
        "CR2: 0x0000000000001000 (address accessed)",
        "RIP: 0xffffffff8",
        "CR0: 0x",
        "PKRS:",
        "RAX: ",
        "backtrace",
        "!!! stopping the machine: exit status 35 (failure)",
    ]);
    assert_eq!(
        run.test_results(),
        [("deliberate_page_fault".to_string(), false)]
    );
}

#[test]
fn unexpected_interrupt_is_named_in_the_report() {
    boot(qemu("test=deliberate_unhandled_vector"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "!!! kernel fault: unexpected interrupt (INTR, vector 64)",
            "during test deliberate_unhandled_vector",
        ]);
}

#[test]
fn panic_gives_a_full_report_and_failure() {
    boot(qemu("test=deliberate_panic"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "!!! kernel panic at kernel/src/testing.rs:",
            "deliberate panic to exercise the panic report",
            "during test deliberate_panic",
            "backtrace",
            "exit status 35 (failure)",
        ]);
}

#[test]
fn failed_check_is_reported_and_later_tests_still_run() {
    let run = boot(qemu("test=deliberate_check_failure,breakpoint_returns"));
    run.expect_outcome(Outcome::KernelFailure)
        .expect_console(&["1 + 1 == 3 failed: 2 != 3", "tests: 1 passed, 1 failed"]);
    assert_eq!(
        run.test_results(),
        [
            ("deliberate_check_failure".to_string(), false),
            ("breakpoint_returns".to_string(), true)
        ]
    );
}

#[test]
fn a_test_that_leaves_state_behind_fails() {
    // A frame kept, a key left on a page: each test passes by itself and
    // the harness's checks after it fail it; later tests still run.
    let run = boot(qemu(
        "test=deliberate_frame_leak,deliberate_key_left_behind,breakpoint_returns",
    ));
    run.expect_outcome(Outcome::KernelFailure).expect_console(&[
        "after deliberate_frame_leak: ",
        " after: it left frames allocated",
        "after deliberate_key_left_behind: verification walk failed: stray keys on 1 leaves",
        "tests: 0 passed, 3 failed",
    ]);
    // The key stays, so the walk after the last test fails it too: the
    // check runs after every test, not once.
    assert_eq!(
        run.test_results(),
        [
            ("deliberate_frame_leak".to_string(), false),
            ("deliberate_key_left_behind".to_string(), false),
            ("breakpoint_returns".to_string(), false)
        ]
    );
}

#[test]
fn triple_fault_is_a_failure_not_a_pass() {
    boot(qemu("test=deliberate_triple_fault")).expect_outcome(Outcome::TripleFaultOrReset);
}

#[test]
fn hanging_kernel_is_stopped_by_the_timeout() {
    let timeout = Duration::from_secs(3);
    let run: Run = boot(qemu("test=deliberate_hang").timeout(timeout));
    run.expect_outcome(Outcome::Timeout(timeout))
        .expect_console(&["test deliberate_hang ... "]);
    assert!(!run.0.outcome.is_success());
}

/// Parses `memory: N usable MiB (B bytes) in R regions, usable memory
/// ends at 0xH; ...` into (B, R, H).
fn memory_summary(run: &Run) -> (u64, usize, u64) {
    let line = run.line_starting("memory: ");
    let field = |before: &str, after: &str| -> String {
        let start = line
            .find(before)
            .map(|i| i + before.len())
            .unwrap_or_else(|| panic!("{line}"));
        let rest = &line[start..];
        rest[..rest.find(after).unwrap_or_else(|| panic!("{line}"))].to_string()
    };
    let bytes = field("(", " bytes)").parse().expect("usable bytes");
    let regions = field("in ", " regions").parse().expect("region count");
    let highest =
        u64::from_str_radix(field("ends at 0x", ";").as_str(), 16).expect("highest address");
    (bytes, regions, highest)
}

/// QEMU's `pc` machine (SeaBIOS) reports RAM as [0, 639 KiB) plus
/// [1 MiB, top - 128 KiB), split at 3 GiB with the rest above 4 GiB when
/// RAM exceeds the 32-bit hole.
fn expected_usable(ram: u64) -> (u64, usize, u64) {
    const LOW: u64 = 0x9fc00;
    const FIRMWARE_TOP: u64 = 128 << 10;
    const MIB: u64 = 1 << 20;
    const LOWMEM_LIMIT: u64 = 3 << 30;
    if ram <= LOWMEM_LIMIT {
        (LOW + ram - MIB - FIRMWARE_TOP, 2, ram - FIRMWARE_TOP)
    } else {
        let high = ram - LOWMEM_LIMIT;
        (
            LOW + LOWMEM_LIMIT - MIB - FIRMWARE_TOP + high,
            3,
            (4 << 30) + high,
        )
    }
}

#[test]
fn direct_map_without_gigabyte_pages_uses_2_mib_pages() {
    boot(qemu("test=all").memory("4G").cpu("max,pdpe1gb=off"))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "-1GiB-pages",
            "direct map: 4096 MiB at 0xffff800000000000: 0 x 1 GiB + 2048 x 2 MiB pages, 5 page tables",
            "verification walk: PASS",
            ALL_UNDER_PKS,
        ]);
}

#[test]
fn memory_maps_of_small_odd_and_large_machines() {
    // The direct map widens usable regions to 2 MiB and uses 1 GiB pages
    // wherever a whole gigabyte is covered.
    for (size, ram, direct_map) in [
        (
            "32M",
            32u64 << 20,
            "direct map: 32 MiB at 0xffff800000000000: 0 x 1 GiB + 16 x 2 MiB",
        ),
        (
            "129M",
            129 << 20,
            "direct map: 130 MiB at 0xffff800000000000: 0 x 1 GiB + 65 x 2 MiB",
        ),
        (
            "1G",
            1 << 30,
            "direct map: 1024 MiB at 0xffff800000000000: 1 x 1 GiB + 0 x 2 MiB",
        ),
        (
            "4G",
            4 << 30,
            "direct map: 4096 MiB at 0xffff800000000000: 4 x 1 GiB + 0 x 2 MiB",
        ),
    ] {
        let run = boot(qemu("test=all").memory(size));
        run.expect_outcome(Outcome::Success).expect_console(&[
            ALL_UNDER_PKS,
            direct_map,
            "verification walk: PASS",
        ]);
        assert_eq!(
            memory_summary(&run),
            expected_usable(ram),
            "-m {size}\n{}",
            run.0.transcript()
        );
    }
}
