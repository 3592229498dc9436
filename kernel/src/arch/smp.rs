//! Application-processor bring-up: the CPUs from the MADT, INIT-SIPI-SIPI
//! through a real-mode trampoline, and each AP's own tables, stacks,
//! per-CPU area and protection state.
//!
//! **The trampoline** (`ap_trampoline_*` below) is one page of 16-, 32-
//! and 64-bit code, assembled into the image's rodata and copied at run
//! time to a free usable page below 1 MiB (the highest one under the
//! EBDA that does not hold `hvm_start_info`; the allocator never manages
//! the first MiB). It needs no page tables of its own: in 32-bit mode it
//! loads the kernel's real CR3, the boot stub's PML4, which lies in the
//! image at 2 MiB, below 4 GiB. The only extra mapping is the
//! trampoline page at its own physical address, where the first
//! instruction after paging is fetched: `paging::IdentityPage`, a
//! read-execute page in the kernel root's otherwise empty user half whose
//! three tables come from the page-table freetype (so they are protected
//! and need no early-table record). It lives only while APs start and is
//! torn down (tables unlinked, zeroed and freed, CR3 reloaded) before the
//! verification walk; each AP reloads CR3 once it is told, so no CPU
//! keeps a translation of it. The trampoline's GDT has its accessed bits
//! set, since the page is read-only once paging is on.
//!
//! **Per-CPU state.** The boot CPU prepares everything an AP needs before
//! its SIPI, so the AP never allocates: in the kernel space, from
//! [`AP_REGION`] at 1 MiB per CPU, a page holding its GDT and TSS
//! (mapped read-only; filled through the ephemeral slot), a 64 KiB kernel
//! stack, five 16 KiB IST stacks and a 16 KiB entry stack (what entries
//! from user mode run on), each with an unmapped guard page below it; and its [`percpu`] slot, whose address the trampoline loads
//! into IA32_GS_BASE before any Rust runs. The AP loads its GDT through
//! the frame's direct-map alias (`ltr` writes the busy bit), then through
//! the read-only mapping, loads the shared IDT, enables its APIC, and runs
//! `pks::init_ap`: the boot CPU's `enable_protections` and protection
//! set-up, then the register check. It prints its `cpu N:` line, marks
//! itself online, waits for the identity mapping to go, flushes, and parks
//! (`hlt`, interrupts off).
//!
//! **Console.** APs start one at a time: the boot CPU waits for each to be
//! online (after its line) before the next SIPI, and prints nothing while
//! it waits, so lines never interleave; the console lock serialises any
//! other case line by line.
//!
//! **Limits.** At most [`MAX_CPUS`] (8) CPUs; more in the MADT are listed
//! as not started. xAPIC only (ids up to 254; x2APIC entries are counted
//! and not started). An AP not online within 200 ms is sent INIT again
//! (back to wait-for-SIPI) and reported. Once every AP is up, the
//! direct-map alias of each AP's GDT and TSS page becomes read-only too
//! (one 2M->4K split, the page's), so like the boot CPU's, in the image,
//! they are read-only in both mappings.

use super::percpu::{self, MAX_CPUS};
use super::{acpi, apic, cpu, gdt, idt, pks};
use crate::memory::paging::{self, IdentityPage, KERNEL_MAP_BASE, MapFlags};
use crate::println;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where the APs' stacks and tables are mapped: the upper half of the
/// kernel space's region, 1 MiB per CPU number.
pub const AP_REGION: u64 = KERNEL_MAP_BASE + (256 << 30);
const CPU_STRIDE: u64 = 1 << 20;
/// Each item (tables, kernel stack, IST stacks) starts a 128 KiB slot
/// whose first page is a guard.
const ITEM_STRIDE: u64 = 128 << 10;
const KERNEL_STACK_PAGES: u64 = 16;
const IST_STACK_PAGES: u64 = 4;
/// The entry stack (user-mode entries) takes the item after the IST
/// stacks: tables 0, kernel stack 1, IST stacks 2 to 6.
const ENTRY_STACK_ITEM: u64 = 2 + gdt::IST_COUNT as u64;
const ENTRY_STACK_PAGES: u64 = (gdt::ENTRY_STACK_SIZE / 4096) as u64;
const _: () = assert!((ENTRY_STACK_ITEM + 1) * ITEM_STRIDE <= CPU_STRIDE);
/// Where the TSS sits in an AP's tables page (after the GDT).
pub const AP_TSS_OFFSET: u64 = 0x100;
/// How long the boot CPU waits for an AP after its SIPIs.
const ONLINE_WAIT_US: u64 = 200_000;

core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 4096
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    xor %ebx, %ebx
    mov %ax, %bx
    shl $4, %ebx
    lgdtl (ap_tr_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *(ap_tr_far32 - ap_trampoline_start)

    .code32
ap_tr_32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov (ap_tr_cr4 - ap_trampoline_start)(%ebx), %eax
    mov %eax, %cr4
    mov (ap_tr_cr3 - ap_trampoline_start)(%ebx), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or (ap_tr_efer - ap_trampoline_start)(%ebx), %eax
    wrmsr
    mov %cr0, %eax
    and $0x9fffffff, %eax
    or $0x80010001, %eax
    mov %eax, %cr0
    ljmpl *(ap_tr_far64 - ap_trampoline_start)(%ebx)

    .code64
ap_tr_64:
    mov %ebx, %ebx
    mov $0xc0000101, %ecx
    mov (ap_tr_gsbase - ap_trampoline_start)(%rbx), %eax
    mov (ap_tr_gsbase - ap_trampoline_start + 4)(%rbx), %edx
    wrmsr
    mov (ap_tr_stack - ap_trampoline_start)(%rbx), %rsp
    mov (ap_tr_arg - ap_trampoline_start)(%rbx), %rdi
    mov (ap_tr_entry - ap_trampoline_start)(%rbx), %rax
    push $0
    jmp *%rax

    .balign 8
ap_tr_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00af9b000000ffff
ap_tr_gdt_end:
    .global ap_tr_gdt_ptr
ap_tr_gdt_ptr:
    .word ap_tr_gdt_end - ap_tr_gdt - 1
    .long ap_tr_gdt - ap_trampoline_start
    .global ap_tr_far32
ap_tr_far32:
    .long ap_tr_32 - ap_trampoline_start
    .word 0x08
    .global ap_tr_far64
ap_tr_far64:
    .long ap_tr_64 - ap_trampoline_start
    .word 0x18
    .balign 8
    .global ap_tr_cr3
ap_tr_cr3: .quad 0
    .global ap_tr_cr4
ap_tr_cr4: .quad 0
    .global ap_tr_efer
ap_tr_efer: .quad 0
    .global ap_tr_gsbase
ap_tr_gsbase: .quad 0
    .global ap_tr_stack
ap_tr_stack: .quad 0
    .global ap_tr_arg
ap_tr_arg: .quad 0
    .global ap_tr_entry
ap_tr_entry: .quad 0
    .global ap_trampoline_end
ap_trampoline_end:
    .text
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_tr_gdt_ptr: u8;
    static ap_tr_far32: u8;
    static ap_tr_far64: u8;
    static ap_tr_cr3: u8;
    static ap_tr_cr4: u8;
    static ap_tr_efer: u8;
    static ap_tr_gsbase: u8;
    static ap_tr_stack: u8;
    static ap_tr_arg: u8;
    static ap_tr_entry: u8;
}

/// Offset of a trampoline symbol from its start.
fn offset(symbol: *const u8) -> u64 {
    symbol as u64 - (&raw const ap_trampoline_start) as u64
}

/// What each AP loads its GDT from (filled before its SIPI).
struct ApTables {
    gdt_writable: AtomicU64,
    gdt_read_only: AtomicU64,
}

static AP_TABLES: [ApTables; MAX_CPUS] = [const {
    ApTables {
        gdt_writable: AtomicU64::new(0),
        gdt_read_only: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Set once the trampoline's identity mapping is gone: parked APs flush.
static IDENTITY_GONE: AtomicBool = AtomicBool::new(false);

/// Work handed to a parked AP ([`run_on`]): a function pointer, 0 for
/// none, taken by the AP when an IPI wakes it.
static WORK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Work items each AP has finished.
static WORK_DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Why [`run_on`] did not run its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOnError {
    /// No online AP has that CPU number (the boot CPU runs its own work).
    NotOnline(usize),
    /// The IPI could not be sent.
    Ipi,
    /// The AP did not finish within the time given.
    TimedOut,
}

/// Runs `work` on the online AP number `cpu` (woken by an IPI, with
/// interrupts off and its own protection state) and waits, up to
/// `timeout_ms`, until it has finished. For tests and, until the
/// scheduler exists, the only way to run code on an AP. One caller at a
/// time per AP.
pub fn run_on(cpu: usize, work: fn(), timeout_ms: u64) -> Result<(), RunOnError> {
    let started = start_on(cpu, work)?;
    wait_for_work(cpu, started, timeout_ms)
}

/// Runs `work` on every online CPU at once: each AP as [`run_on`] does,
/// and this CPU (the boot CPU) too, then waits up to `timeout_ms` for the
/// APs. Returns how many CPUs ran it. For tests of concurrency: `work`
/// tells the CPUs apart with `percpu::index`.
pub fn run_on_all(work: fn(), timeout_ms: u64) -> Result<usize, RunOnError> {
    let mut started: heapless::Vec<(usize, u64), MAX_CPUS> = heapless::Vec::new();
    for (cpu, _) in online_cpus() {
        if cpu != percpu::index() {
            // At most MAX_CPUS CPUs are online.
            let _ = started.push((cpu, start_on(cpu, work)?));
        }
    }
    work();
    for &(cpu, done) in &started {
        wait_for_work(cpu, done, timeout_ms)?;
    }
    Ok(started.len() + 1)
}

/// Hands `work` to AP `cpu` and wakes it, without waiting (for tests that
/// act while it runs); returns the ticket [`wait_for_work`] takes: the
/// AP's count of finished work before this one.
pub fn start_on(cpu: usize, work: fn()) -> Result<u64, RunOnError> {
    let slot = percpu::slot(cpu)
        .filter(|slot| cpu != 0 && slot.is_online())
        .ok_or(RunOnError::NotOnline(cpu))?;
    let done = WORK_DONE[cpu].load(Ordering::Acquire);
    WORK[cpu].store(work as usize as u64, Ordering::Release);
    apic::send_ipi(slot.apic_id()).map_err(|_| RunOnError::Ipi)?;
    Ok(done)
}

/// Waits, up to `timeout_ms`, until AP `cpu` has finished more work than
/// `done` ([`start_on`]'s ticket), answering shootdowns meanwhile (the work may convert memory).
pub fn wait_for_work(cpu: usize, done: u64, timeout_ms: u64) -> Result<(), RunOnError> {
    let mut waited_us = 0;
    while WORK_DONE[cpu].load(Ordering::Acquire) == done {
        if waited_us >= timeout_ms * 1000 {
            // Take the work back if the AP never picked it up.
            WORK[cpu].store(0, Ordering::Release);
            return Err(RunOnError::TimedOut);
        }
        let _ = crate::memory::tlb::answer_shootdown();
        apic::delay_us(100);
        waited_us += 100;
    }
    Ok(())
}

/// A parked AP: sleeps until an IPI, runs the work it was given, again.
fn serve(index: usize) -> ! {
    loop {
        cpu::wait_for_interrupt();
        let work = WORK[index].swap(0, Ordering::AcqRel);
        if work != 0 {
            // SAFETY: `run_on` stored a `fn()` there, cast to an integer;
            // 0 (none) was ruled out above.
            let work: fn() = unsafe { core::mem::transmute::<usize, fn()>(work as usize) };
            work();
            WORK_DONE[index].fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The CPUs online (the hook for shootdowns): CPU numbers and APIC ids.
pub fn online_cpus() -> heapless::Vec<(usize, u32), MAX_CPUS> {
    (0..MAX_CPUS)
        .filter_map(percpu::slot)
        .filter(|slot| slot.is_online())
        .map(|slot| (slot.index(), slot.apic_id()))
        .collect()
}

/// Prints this CPU's `cpu N:` line: APIC id and protection state.
fn print_cpu_line(index: usize, apic_id: u32) {
    let cr4 = cpu::read_cr4();
    let on = |bit: u64| if cr4 & bit != 0 { "on" } else { "off" };
    let pkrs = cpu::read_pkrs_if_enabled().map(|v| pkeys::Pkrs::from_bits(v as u32));
    let check = pks::current().map(|p| p.check());
    let mut pkrs_text: heapless::String<64> = heapless::String::new();
    let _ = match pkrs {
        Some(pkrs) => core::fmt::write(&mut pkrs_text, format_args!("PKRS {pkrs}")),
        None => core::fmt::write(&mut pkrs_text, format_args!("PKRS -")),
    };
    println!(
        "cpu {}: APIC id {}, CR4.PKS {}, {}, SMEP {}, SMAP {}, CR0.WP {}, register check {}",
        index,
        apic_id,
        on(pkeys::cpu::CR4_PKS),
        pkrs_text,
        on(pks::CR4_SMEP),
        on(pks::CR4_SMAP),
        if cpu::read_cr0() & pks::CR0_WP != 0 {
            "on"
        } else {
            "off"
        },
        match check {
            Some(Ok(())) => "held",
            Some(Err(_)) => "FAILED",
            None => "not run",
        }
    );
}

/// Picks the trampoline page: the highest usable page below the EBDA
/// (0x9f000) that does not hold `hvm_start_info`; its number is the SIPI
/// vector.
fn trampoline_page(info: &boot::BootInfo) -> Option<u64> {
    let start_info_page = info.start_info_phys & !0xfff;
    let mut best = None;
    for region in info.memory.usable() {
        let low = region.start.max(0x1000).next_multiple_of(4096);
        let limit = region.end.min(0x9f000);
        if limit < low + 4096 {
            continue;
        }
        let mut page = (limit - 4096) & !0xfff;
        while page >= low {
            if page != start_info_page {
                best = best.max(Some(page));
                break;
            }
            page -= 4096;
        }
    }
    best
}

/// Maps an AP's tables and stacks (module doc) and returns (kernel stack
/// top, GDT through the direct map, GDT read-only).
fn prepare_cpu(index: usize) -> Result<(u64, u64, u64), &'static str> {
    use crate::memory::frames::alloc_frame;
    let space = paging::kernel_space().ok_or("no kernel space")?;
    let base = AP_REGION + index as u64 * CPU_STRIDE;
    let item = |k: u64| base + k * ITEM_STRIDE + 4096;
    let kernel_type = ptalloc::Freetype {
        mobility: ptalloc::Mobility::Unmovable,
        protection: ptalloc::Protection::Mapped,
    };
    let rw = MapFlags {
        writable: true,
        executable: false,
    };
    let map_stack = |start: u64, pages: u64| -> Result<u64, &'static str> {
        for page in 0..pages {
            let frame =
                alloc_frame(0, kernel_type, true).map_err(|_| "out of memory for stacks")?;
            space
                .map(start + page * 4096, frame, rw)
                .map_err(|_| "mapping a stack page failed")?;
        }
        Ok(start + pages * 4096)
    };
    let stack_top = map_stack(item(1), KERNEL_STACK_PAGES)?;
    let mut ist_tops = [0u64; gdt::IST_COUNT];
    for (i, top) in ist_tops.iter_mut().enumerate() {
        *top = map_stack(item(2 + i as u64), IST_STACK_PAGES)?;
    }
    let entry_top = map_stack(item(ENTRY_STACK_ITEM), ENTRY_STACK_PAGES)?;
    if let Some(slot) = percpu::slot(index) {
        slot.entry_stack_top.store(entry_top, Ordering::Release);
    }
    let tables_virt = item(0);
    let (gdt_bytes, tss_bytes) = gdt::ap_tables(tables_virt + AP_TSS_OFFSET, ist_tops, entry_top);
    let mut frame = alloc_frame(0, kernel_type, true).map_err(|_| "out of memory for the GDT")?;
    crate::memory::ephemeral::copy_to(&mut frame, 0, &gdt_bytes).ok_or("writing the GDT failed")?;
    crate::memory::ephemeral::copy_to(&mut frame, AP_TSS_OFFSET, &tss_bytes)
        .ok_or("writing the TSS failed")?;
    let direct = crate::memory::direct_map::info()
        .and_then(|info| crate::memory::direct_map::phys_to_virt(info, frame.addr(), 4096))
        .ok_or("the GDT frame is outside the direct map")?;
    let ro = MapFlags {
        writable: false,
        executable: false,
    };
    space
        .map(tables_virt, frame, ro)
        .map_err(|_| "mapping the GDT failed")?;
    Ok((stack_top, direct, tables_virt))
}

/// Copies the trampoline to `page` (through the direct map) and fills the
/// fields every AP shares.
fn install_trampoline(page: u64) -> Option<u64> {
    let start = (&raw const ap_trampoline_start) as u64;
    let len = (&raw const ap_trampoline_end) as u64 - start;
    let info = crate::memory::direct_map::info()?;
    let virt = crate::memory::direct_map::phys_to_virt(info, page, 4096)?;
    if len > 4096 || paging::page_table_memory_in(page, 4096).is_some() {
        return None;
    }
    // SAFETY: `page` is a usable page below 1 MiB that nothing else uses
    // (not the start info, not allocator memory, not a page table: checked)
    // and the direct map maps it writable; the source is the image's
    // trampoline, `len` bytes.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, virt as *mut u8, len as usize) };
    let put32 = |symbol: *const u8, value: u32| {
        // SAFETY: as above; the field lies inside the copied bytes.
        unsafe { ((virt + offset(symbol)) as *mut u32).write_unaligned(value) }
    };
    // The 16-bit GDT pointer's base and the far pointers' offsets are
    // linear addresses: add the page.
    for (symbol, field) in [
        ((&raw const ap_tr_gdt_ptr), 2),
        ((&raw const ap_tr_far32), 0),
        ((&raw const ap_tr_far64), 0),
    ] {
        let at = virt + offset(symbol) + field;
        // SAFETY: as above.
        let old = unsafe { (at as *const u32).read_unaligned() };
        put32(symbol.wrapping_add(field as usize), old + page as u32);
    }
    let cr4 = super::pks::CR4_PAE | (cpu::read_cr4() & super::pks::CR4_LA57);
    let efer = (1u64 << 8)
        | if cpu::nx_enabled() {
            super::pks::EFER_NXE
        } else {
            0
        };
    set_field(virt, &raw const ap_tr_cr3, crate::memory::kernel_root());
    set_field(virt, &raw const ap_tr_cr4, cr4);
    set_field(virt, &raw const ap_tr_efer, efer);
    set_field(virt, &raw const ap_tr_entry, ap_entry as *const () as u64);
    Some(virt)
}

fn set_field(virt: u64, symbol: *const u8, value: u64) {
    // SAFETY: `virt` is the installed trampoline (see `install_trampoline`)
    // and the field an 8-byte slot inside it.
    unsafe { ((virt + offset(symbol)) as *mut u64).write_volatile(value) };
}

/// Brings up the APs the MADT lists. Prints the boot CPU's `cpu 0:` line,
/// one `smp:` line for what was found, each AP's `cpu N:` line (printed by
/// the AP), and a summary. Any failure ends with fewer CPUs and a line
/// saying why, never a panic.
pub fn bring_up(info: &boot::BootInfo) {
    let boot_apic = cpu::current_cpu_id();
    print_cpu_line(0, boot_apic);
    percpu::set_online();
    let list = match acpi::find_cpus(info.rsdp, boot_apic) {
        Ok(list) => list,
        Err(error) => {
            println!("smp: {error}; running on the boot CPU only");
            return;
        }
    };
    let mut ids: heapless::String<64> = heapless::String::new();
    for id in &list.apic_ids {
        let _ = core::fmt::write(&mut ids, format_args!(" {id}"));
    }
    println!(
        "smp: MADT: {} CPUs enabled (APIC ids{}), {} disabled, local APIC at {:#x}",
        list.apic_ids.len() + list.beyond_limit.len(),
        ids,
        list.disabled,
        list.local_apic_base
    );
    if !list.beyond_limit.is_empty() || list.x2apic_entries > 0 {
        println!(
            "smp: {} CPUs not started: past MAX_CPUS ({}): {}, x2APIC entries: {}",
            list.beyond_limit.len() as u32 + list.x2apic_entries,
            MAX_CPUS,
            list.beyond_limit.len(),
            list.x2apic_entries
        );
    }
    if list.apic_ids.len() < 2 {
        return;
    }
    if let Err(error) = apic::init(list.local_apic_base, &info.memory) {
        println!("smp: {error}; running on the boot CPU only");
        return;
    }
    let Some(page) = trampoline_page(info) else {
        println!("smp: no free page below 1 MiB for the trampoline; running on the boot CPU only");
        return;
    };
    let identity = match IdentityPage::map(page) {
        Ok(identity) => identity,
        Err(error) => {
            println!(
                "smp: mapping the trampoline page failed: {error:?}; running on the boot CPU only"
            );
            return;
        }
    };
    let Some(virt) = install_trampoline(identity.addr()) else {
        println!("smp: installing the trampoline failed; running on the boot CPU only");
        return;
    };
    let started = cpu::read_tsc();
    for (index, &apic_id) in list.apic_ids.iter().enumerate().skip(1) {
        let (stack, gdt_writable, gdt_read_only) = match prepare_cpu(index) {
            Ok(prepared) => prepared,
            Err(why) => {
                println!("smp: cpu {index} (APIC id {apic_id}) not started: {why}");
                continue;
            }
        };
        let Some(slot) = percpu::slot(index) else {
            continue;
        };
        let Some(gs_base) = percpu::assign(index, apic_id) else {
            continue;
        };
        AP_TABLES[index]
            .gdt_writable
            .store(gdt_writable, Ordering::Release);
        AP_TABLES[index]
            .gdt_read_only
            .store(gdt_read_only, Ordering::Release);
        set_field(virt, &raw const ap_tr_stack, stack);
        set_field(virt, &raw const ap_tr_arg, index as u64);
        set_field(virt, &raw const ap_tr_gsbase, gs_base);
        let vector = (page >> 12) as u8;
        if let Err(error) = apic::start_cpu(apic_id, vector, || slot.is_online()) {
            println!("smp: cpu {index} (APIC id {apic_id}) not started: {error}");
            continue;
        }
        let mut waited = 0;
        while !slot.is_online() && waited < ONLINE_WAIT_US {
            apic::delay_us(100);
            waited += 100;
        }
        if !slot.is_online() {
            let _ = apic::park_cpu(apic_id);
            println!(
                "smp: cpu {index} (APIC id {apic_id}) did not come online within {} ms; sent INIT to park it",
                ONLINE_WAIT_US / 1000
            );
        }
    }
    let cycles = cpu::read_tsc() - started;
    drop(identity);
    IDENTITY_GONE.store(true, Ordering::Release);
    seal_ap_tables();
    println!(
        "smp: {} of {} CPUs online (trampoline at {:#x}, its identity mapping torn down; APs started in {} M TSC cycles)",
        online_cpus().len(),
        list.apic_ids.len(),
        page,
        cycles / 1_000_000
    );
}

/// Makes the direct-map alias of every online AP's GDT and TSS page
/// read-only, as the boot CPU's are (the CPUs read them through the
/// read-only mapping since `gdt::load_ap`), then flushes the old writable
/// translations on every CPU in one round. Says so if one could not be.
fn seal_ap_tables() {
    let mut aliases: heapless::Vec<u64, MAX_CPUS> = heapless::Vec::new();
    for (index, _) in online_cpus().into_iter().filter(|&(index, _)| index != 0) {
        let alias = AP_TABLES[index].gdt_writable.load(Ordering::Acquire);
        let phys = alias - crate::memory::direct_map::DIRECT_MAP_BASE;
        match crate::memory::image::read_only_alias(phys) {
            Ok(_) => {
                // At most MAX_CPUS - 1 APs.
                let _ = aliases.push(alias);
            }
            Err(error) => println!(
                "smp: cpu {index}: its GDT and TSS stay writable in the direct map: {error}"
            ),
        }
    }
    crate::memory::tlb::flush_pages(&aliases, crate::memory::tlb::Reach::Everywhere);
}

/// AP `cpu`'s GDT and TSS page, if it was prepared: (its direct-map alias,
/// its read-only kernel-space mapping), the TSS at [`AP_TSS_OFFSET`] in
/// both. Read-only in both once the APs are up.
pub fn ap_tables(cpu: usize) -> Option<(u64, u64)> {
    let tables = AP_TABLES.get(cpu)?;
    let alias = tables.gdt_writable.load(Ordering::Acquire);
    (alias != 0).then(|| (alias, tables.gdt_read_only.load(Ordering::Acquire)))
}

/// An AP's first Rust code, on its own kernel stack with GS set.
extern "C" fn ap_entry(index: u64) -> ! {
    let index = index as usize;
    let tables = &AP_TABLES[index.min(MAX_CPUS - 1)];
    // SAFETY: the boot CPU filled this AP's tables before its SIPI
    // (`prepare_cpu`), and this runs once, first, on that AP.
    unsafe {
        gdt::load_ap(
            tables.gdt_writable.load(Ordering::Acquire),
            tables.gdt_read_only.load(Ordering::Acquire),
        );
        idt::load_on_ap();
    }
    apic::enable();
    // SAFETY: once, on this AP, after its GDT (with the user segments) and
    // GS are loaded; `prepare_cpu` mapped its entry stack and recorded it
    // in the AP's per-CPU area.
    unsafe { super::usermode::init_cpu() };
    let apic_id = apic::id();
    match pks::init_ap(index) {
        Ok(_) => {
            print_cpu_line(index, apic_id);
            percpu::set_online();
        }
        Err(error) => {
            println!("cpu {index}: APIC id {apic_id}, protections not set up: {error:?}; parked")
        }
    }
    while !IDENTITY_GONE.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    // Drop whatever this CPU cached of the identity mapping.
    cpu::reload_cr3();
    if percpu::current().is_online() {
        serve(index)
    }
    cpu::halt_forever()
}
