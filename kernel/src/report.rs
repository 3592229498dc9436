//! The boot report: what the machine is and what the kernel made of it.
//!
//! Printed on COM1 for people and for the integration tests, which match
//! its lines; key figures are also logged through defmt.

use crate::arch::cpu;
use crate::{BootState, memory, print, println};
use boot::cmdline::OPTIONS;
use pkeys::ProtectionPolicy;

const MIB: u64 = 1 << 20;

/// Lists the accepted options, after a command-line error.
pub fn print_options() {
    println!("accepted options (key=value, separated by spaces):");
    for (option, accepted) in OPTIONS {
        println!("    {}: {}", option, accepted);
    }
}

/// Prints the whole boot report.
pub fn print_boot_report(boot: &BootState) {
    let mut cpu_name: heapless::String<96> = heapless::String::new();
    // A cut-off CPU name is fine.
    let _ = cpu::describe_cpu(&mut cpu_name);
    println!("cpu: {}", cpu_name);
    print!("cpu features:");
    for (name, present) in boot.features.list() {
        print!(" {}{}", if present { '+' } else { '-' }, name);
    }
    println!();
    let e = &boot.enabled;
    println!(
        "cpu protections: SMEP {}, SMAP {}, UMIP {}, NX {}, CR0.WP {}",
        on_off(e.smep),
        on_off(e.smap),
        on_off(e.umip),
        on_off(e.nx),
        on_off(e.wp)
    );
    match cpu::read_pkrs_if_enabled() {
        Some(pkrs) => println!(
            "PKS: present, CR4.PKS on, PKRS {}",
            pkeys::Pkrs::from_bits(pkrs as u32)
        ),
        None if boot.features.pks => {
            println!("PKS: present, not enabled (the policy does not use it)")
        }
        None => println!("PKS: absent"),
    }

    let requested = boot.config.ptprot;
    let how = match (requested, boot.features.pks) {
        (ProtectionPolicy::Auto, true) => " (auto: PKS present)",
        (ProtectionPolicy::Auto, false) => " (auto: PKS absent)",
        _ => "",
    };
    let mechanism = crate::arch::pks::current().map(|p| p.mechanism());
    println!(
        "protection policy: ptprot={}{}, write windows by {}",
        boot.ptprot.name(),
        how,
        mechanism.map_or("nothing", mechanism_name)
    );
    for consumer in pkeys::keys::KEY_TABLE {
        println!(
            "    {}: {}, {:?} outside windows",
            consumer.key, consumer.name, consumer.rights
        );
    }
    println!(
        "object protection: protect={} (classes with keys of their own; none under ptprot=none)",
        crate::object::protection::in_force().spelling()
    );
    let applies = match boot.ptprot {
        ProtectionPolicy::Pks => "",
        ProtectionPolicy::ReadOnlyAlias => {
            " (does not apply: ptprot=ro uses no protection keys; a write to a page table is \
             a write-protection fault, which stops the machine)"
        }
        _ => " (does not apply: ptprot=none protects nothing, so no write faults)",
    };
    println!(
        "pk fault policy: pkfault={}{}",
        boot.config.pkfault.name(),
        applies
    );
    println!(
        "command line: \"{}\"",
        boot::cmdline::Escaped(&boot.info.command_line)
    );

    let memory = &boot.info.memory;
    let summary = memory.summary();
    println!(
        "memory: {} usable MiB ({} bytes) in {} regions, usable memory ends at {:#x}; reserved ranges span {} MiB",
        summary.usable_bytes / MIB,
        summary.usable_bytes,
        summary.usable_regions,
        summary.highest_usable_end,
        summary.reserved_bytes / MIB
    );
    println!(
        "memory: {} whole 2 MiB pageblocks usable",
        memory.whole_usable_blocks(ptalloc::PAGEBLOCK_SIZE)
    );
    for region in memory.regions() {
        println!(
            "    [{:#014x}, {:#014x}) {:>10} KiB  {}",
            region.start,
            region.end,
            region.len() / 1024,
            region.kind.name()
        );
    }
    match boot.info.rsdp {
        Some(rsdp) => println!("acpi: RSDP at {:#x}", rsdp),
        None => println!("acpi: no RSDP given"),
    }
    let image = memory::kernel_image_phys();
    println!(
        "kernel image: physical [{:#x}, {:#x})",
        image.start, image.end
    );
    let direct_map = &boot.memory.direct_map;
    println!(
        "direct map: {} MiB at {:#x}: {} x 1 GiB + {} x 2 MiB pages, {} page tables",
        direct_map.bytes() / MIB,
        memory::direct_map::DIRECT_MAP_BASE,
        direct_map.giga_pages,
        direct_map.mega_pages,
        direct_map.tables
    );
    println!(
        "early page tables: {} recorded",
        memory::EARLY_PAGE_TABLES.lock().len()
    );
    print_allocator(boot);
    print_verification(boot);
    println!(
        "boot stack: {} KiB of {} KiB used so far",
        boot::entry::boot_stack_high_water() / 1024,
        boot::entry::BOOT_STACK_SIZE / 1024
    );

    defmt::info!(
        "boot: {=u64} MiB usable, PKS {=bool}, ptprot={=str}",
        summary.usable_bytes / MIB,
        boot.features.pks,
        boot.ptprot.name()
    );
}

/// The page allocator: where its metadata is, pageblocks per freetype,
/// and the counters the design argues about.
fn print_allocator(boot: &BootState) {
    let Some(stats) = memory::frames::stats() else {
        println!("page allocator: not set up");
        return;
    };
    let info = &boot.memory.frames;
    println!(
        "page allocator: {} frames, metadata {} KiB at {:#x}, conversion watermark {} pageblocks",
        info.frames_given,
        (info.metadata.end - info.metadata.start) / 1024,
        info.metadata.start,
        info.conversion_watermark
    );
    let policy = memory::frames::policy();
    println!(
        "page-table policy: ptstrategy={} ptfallback={}",
        policy.strategy_name(),
        policy.fallback_name()
    );
    print!("pageblocks:");
    for freetype in ptalloc::Freetype::all() {
        let count = stats.pageblocks[freetype.index()];
        if count > 0 {
            print!(" {}={}", freetype, count);
        }
    }
    println!();
    print_flush_limit(boot);
    println!(
        "allocator counters: {} conversions in {} batches, {} flushes, splits 1G->2M {} 2M->4K {}, reserve {} (low-water {}), compactions {} ({} failed, {} pages moved), single-page fallbacks {} ({} live)",
        stats.total_conversions(),
        stats.conversion_batches,
        stats.flushes_local,
        stats.splits_1g,
        stats.splits_2m,
        stats.reserve_level,
        stats.reserve_low_water,
        stats.compactions,
        stats.compactions_failed,
        stats.pages_moved,
        stats.single_page_fallbacks,
        stats.single_pages_live
    );
    if crate::arch::smp::online_cpus().len() > 1 {
        let shootdowns = memory::tlb::shootdown_stats();
        println!(
            "shootdowns: {} IPI rounds, {} CPUs interrupted, {} pages and {} full flushes across CPUs",
            shootdowns.rounds,
            shootdowns.cpus_interrupted,
            shootdowns.pages_flushed,
            shootdowns.full_flushes
        );
    }
}

/// The INVLPG-vs-CR3 limit: how it was chosen, and the flushes so far.
fn print_flush_limit(boot: &BootState) {
    let limit = memory::tlb::limit();
    match &boot.memory.flush_calibration {
        None => print!(
            "tlb flush limit: {} pageblocks (flushlimit={})",
            limit, limit
        ),
        Some(measured) => match measured.crossover() {
            Some(dearer) => print!(
                "tlb flush limit: {} pageblocks, measured at boot (INVLPG dearer from {}: {} vs {} cycles)",
                limit, dearer.pageblocks, dearer.invlpg_cycles, dearer.reload_cycles
            ),
            None => print!(
                "tlb flush limit: {} pageblocks, measured at boot (INVLPG never dearer)",
                limit
            ),
        },
    }
    let (invlpg, full) = memory::tlb::flush_counts();
    println!("; flushes so far: {} by INVLPG, {} full", invlpg, full);
}

/// Early-table reprotection and the verification walk.
fn print_verification(boot: &BootState) {
    let r = &boot.memory.reprotected;
    println!(
        "early page tables reprotected: {} (splits 1G->2M {}, 2M->4K {})",
        r.tables, r.splits_1g, r.splits_2m
    );
    let i = &boot.memory.image;
    println!(
        "kernel image W^X: {} pages r-x (text), {} r-- (boot stub, rodata, recovery table, tests, IDT, GDT, TSS), {} rw- (data, bss), {} stack guard pages and {} past the image unmapped; direct-map alias read-only for {} frames (early page tables keep theirs)",
        i.read_execute, i.read_only, i.read_write, i.guards, i.unmapped, i.direct_map_read_only
    );
    let (singles, mixed) = memory::sealed::single_pages();
    println!(
        "sealed records: pageblock protections, single page-table pages ({} in {} of {} mixed-pageblock slots) and early page tables, {} pages with the metadata key; {} pageblocks disagree with the allocator's metadata",
        singles,
        mixed,
        memory::sealed::MIXED_SLOTS,
        boot.memory.sealed_pages,
        boot.verified.metadata_mismatches
    );
    let v = &boot.verified;
    if boot.ptprot == ProtectionPolicy::None {
        println!("verification walk: skipped (ptprot=none protects nothing)");
        return;
    }
    print_register_check(v.registers.as_ref());
    match v.failure() {
        None => println!(
            "verification walk: PASS: {} page-table frames, {} leaf mappings, {} aliases of protected frames, all protected; no stray keys; registers as required",
            v.tables, v.leaves, v.aliases
        ),
        Some(failure) => println!("verification walk: FAIL: {}", failure),
    }
}

/// What the walk's register check looked at.
fn print_register_check(check: Option<&memory::verify::RegisterCheck>) {
    let Some(check) = check else {
        println!("register check: not run (no protection state)");
        return;
    };
    print!("register check: CR0.WP set");
    if let Some(pkrs) = check.pkrs {
        print!(", PKRS {} (the default, no window open)", pkrs);
    }
    print!(", CR4 pinned bits {:#x} (", check.pinned_cr4);
    let mut first = true;
    for (bit, name) in [
        (pkeys::cpu::CR4_PKS, "PKS"),
        (crate::arch::pks::CR4_SMEP, "SMEP"),
        (crate::arch::pks::CR4_SMAP, "SMAP"),
    ] {
        if check.pinned_cr4 & bit != 0 {
            print!("{}{}", if first { "" } else { " " }, name);
            first = false;
        }
    }
    let verdict = if check.result.is_ok() {
        "held"
    } else {
        "FAILED"
    };
    println!(
        "); checked at window close, exception entry and exit, and this walk: {}",
        verdict
    );
}

/// How write windows work under a mechanism, for reports.
pub fn mechanism_name(mechanism: pkeys::Mechanism) -> &'static str {
    match mechanism {
        pkeys::Mechanism::Pks => "PKRS (PKS key write-disable)",
        pkeys::Mechanism::WriteProtect => "CR0.WP (read-only alias)",
        pkeys::Mechanism::None => "nothing (no protection)",
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off (absent)" }
}
