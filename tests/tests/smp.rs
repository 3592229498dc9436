//! SMP bring-up: every CPU the MADT lists comes up with the boot CPU's
//! protection state and says so in one `cpu N:` line, and the walk still
//! passes afterwards.

use qemu_tests::{Run, boot, qemu};
use tools::Outcome;

const PKS_STATE: &str = "CR4.PKS on, PKRS 0x000002a8 (key 1 ro, key 2 ro, key 3 ro, key 4 ro), SMEP on, SMAP on, CR0.WP on, register check held";

/// The `cpu N:` lines of a run, in order.
fn cpu_lines(run: &Run) -> Vec<String> {
    run.0
        .console
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu ")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .map(str::to_owned)
        .collect()
}

/// Boots `-smp cpus` with `cpu` and checks one line per CPU, numbered
/// 0..cpus, each ending with `state`.
fn check_cpus(cpu: &str, cpus: u32, state: &str) -> Run {
    let run = boot(qemu("").cpu(cpu).smp(cpus));
    run.expect_outcome(Outcome::Success)
        .expect_console(&["verification walk: PASS", "boot complete"]);
    let lines = cpu_lines(&run);
    assert_eq!(
        lines.len(),
        cpus as usize,
        "expected {cpus} cpu lines, got {lines:#?}\n\n{}",
        run.0.transcript()
    );
    for (n, line) in lines.iter().enumerate() {
        let prefix = format!("cpu {n}: APIC id {n}, ");
        assert!(
            line.starts_with(&prefix) && line.ends_with(state),
            "line {n} is {line:?}, expected {prefix}...{state}\n\n{}",
            run.0.transcript()
        );
    }
    run
}

#[test]
fn two_cpus_each_report_pks_on_with_the_default_pkrs() {
    let run = check_cpus("max", 2, PKS_STATE);
    run.expect_console(&[
        "smp: MADT: 2 CPUs enabled (APIC ids 0 1), 0 disabled, local APIC at 0xfee00000",
        "smp: 2 of 2 CPUs online (trampoline at 0x",
        "its identity mapping torn down",
    ]);
}

#[test]
fn four_cpus_each_report_pks_on_with_the_default_pkrs() {
    check_cpus("max", 4, PKS_STATE).expect_console(&["smp: 4 of 4 CPUs online"]);
}

#[test]
fn one_cpu_reports_only_cpu_0() {
    check_cpus("max", 1, PKS_STATE)
        .expect_console(&["smp: MADT: 1 CPUs enabled (APIC ids 0)"])
        .expect_no_console("CPUs online");
}

#[test]
fn two_cpus_without_pks_boot_and_report() {
    check_cpus(
        "qemu64",
        2,
        "CR4.PKS off, PKRS -, SMEP off, SMAP off, CR0.WP on, register check held",
    )
    .expect_console(&["smp: 2 of 2 CPUs online"]);
}

/// For the runs that churn page tables on every CPU: TCG runs each vCPU
/// as a host thread, and a shootdown round waits for every vCPU to be
/// scheduled, so on a host with fewer free cores than vCPUs (two cores
/// and a build beside it) the churn takes minutes rather than seconds.
/// The timeout only detects a hang.
const BUSY_HOST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

#[test]
fn two_cpus_run_the_in_kernel_tests() {
    let run = boot(qemu("test=all").smp(2).timeout(BUSY_HOST_TIMEOUT));
    run.expect_outcome(Outcome::Success)
        .expect_console(&["tests: 72 passed, 0 failed, 1 skipped", "shootdowns: "]);
    assert_eq!(cpu_lines(&run).len(), 2, "{}", run.0.transcript());
}

/// The boot matrix of issue 12: 1, 2, 4 and 8 CPUs at 128 MiB, 1 GiB and
/// 4 GiB; each boots every CPU with the boot CPU's protections, and the
/// walk passes.
#[test]
fn every_cpu_count_boots_at_every_memory_size() {
    for memory in ["128M", "1G", "4G"] {
        for cpus in [1, 2, 4, 8] {
            let run = boot(qemu("").memory(memory).smp(cpus));
            run.expect_outcome(Outcome::Success)
                .expect_console(&["verification walk: PASS", "boot complete"]);
            let lines = cpu_lines(&run);
            assert_eq!(
                lines.len(),
                cpus as usize,
                "-m {memory} -smp {cpus}: {lines:#?}\n\n{}",
                run.0.transcript()
            );
            assert!(
                lines.iter().all(|line| line.ends_with(PKS_STATE)),
                "-m {memory} -smp {cpus}: {lines:#?}"
            );
        }
    }
}

/// The per-CPU window proof under each policy at `-smp 2`: CPU 1's write
/// to a page-table page while CPU 0's window is open is stopped under
/// `pks` and `ro` and lands under `none` (the in-kernel test checks
/// which, by the policy it runs under).
#[test]
fn a_window_on_one_cpu_opens_nothing_on_another_under_every_policy() {
    for policy in ["pks", "ro", "none"] {
        let run = boot(
            qemu(&format!(
                "test=a_window_on_one_cpu_opens_nothing_on_another ptprot={policy}"
            ))
            .smp(2),
        );
        run.expect_outcome(Outcome::Success).expect_console(&[
            "test a_window_on_one_cpu_opens_nothing_on_another ... ok",
            "tests: 1 passed, 0 failed, 0 skipped",
        ]);
    }
}

/// A conversion's flush reaches the other CPU: a translation CPU 1
/// loaded is gone there (one shootdown round), under `none` (where TCG
/// keeps the TLB, so a missing round shows) and under `pks`.
#[test]
fn a_conversion_drops_the_old_translation_on_other_cpus() {
    for policy in ["none", "pks"] {
        let run = boot(
            qemu(&format!(
                "test=a_conversion_drops_the_old_translation_on_other_cpus ptprot={policy}"
            ))
            .smp(2),
        );
        run.expect_outcome(Outcome::Success)
            .expect_console(&["test a_conversion_drops_the_old_translation_on_other_cpus ... ok"])
            .expect_log(
                "cross-CPU conversion: 1 shootdown rounds; CPU 1's read of the converted block: 2",
            );
    }
}

/// Every CPU at once, at `-smp 4`: the walk passes from each CPU's CR3,
/// and map/unmap churn of about 10,000 page-table pages on all four
/// together passes the walk at its peak on each, with no 2M->4K split and
/// one shootdown round per allocator flush. The window, conversion and
/// unmap proofs hold with four CPUs online too: a kernel unmap interrupts
/// the three others, a user unmap only the CPU that has the space loaded;
/// an AP's GDT and TSS are read-only in both their mappings; and a
/// shootdown reaches a CPU while it runs user code.
#[test]
fn four_cpus_churn_walk_window_and_shoot() {
    let run = boot(
        qemu(
            "test=the_walk_passes_from_every_cpu,concurrent_churn_on_every_cpu,\
             a_window_on_one_cpu_opens_nothing_on_another,\
             a_conversion_drops_the_old_translation_on_other_cpus,\
             a_kernel_unmap_drops_the_translation_on_other_cpus,\
             a_user_unmap_reaches_only_the_cpus_with_the_space_loaded,\
             an_ap_gdt_and_tss_are_read_only_in_both_mappings,\
             a_shootdown_reaches_a_cpu_running_user_code",
        )
        .smp(4)
        .timeout(BUSY_HOST_TIMEOUT),
    );
    run.expect_outcome(Outcome::Success)
        .expect_console(&["tests: 8 passed, 0 failed, 0 skipped"])
        .expect_log("kernel unmap: 1 shootdown rounds, 3 CPUs interrupted")
        .expect_log("user unmap: (rounds, CPUs interrupted) with CPU 1 in the space 1/1, after it left 0/0, loaded only here 0/0");
    for cpu in 0..4 {
        run.expect_log(&format!("walk from cpu {cpu}'s CR3: "));
        run.expect_log(&format!("concurrent churn: cpu {cpu}: 2500 maps, "));
    }
    run.expect_log("concurrent churn: 4 CPUs, ")
        .expect_log(" 0 2M->4K splits");
}

/// Unmaps under `ptprot=none`, where no window writes a register and TCG
/// keeps every TLB entry it is not told to drop: CPU 1's translation of
/// a kernel page, and of a user page in a space it has loaded, is gone
/// after the unmap's round (both tests fail with the round removed).
#[test]
fn unmaps_drop_the_translation_on_other_cpus_without_protection() {
    let run = boot(
        qemu(
            "test=a_kernel_unmap_drops_the_translation_on_other_cpus,\
             a_user_unmap_reaches_only_the_cpus_with_the_space_loaded ptprot=none",
        )
        .smp(2),
    );
    run.expect_outcome(Outcome::Success)
        .expect_console(&["tests: 2 passed, 0 failed, 0 skipped"])
        .expect_log("CPU 1 read before 1, after 2");
}
