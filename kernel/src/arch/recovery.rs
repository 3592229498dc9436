//! Memory probes that may fault, and the recovery points that let the
//! kernel resume after them.
//!
//! Each probe's one memory access has an entry in the `.recovery_table`
//! section: (address of the access, address to resume at, kind). A fault
//! handler that decides to stop the faulting operation (`pkfault=report`)
//! looks the faulting RIP up with [`recovery_point`]; if found, it resumes
//! there and the probe returns an error instead of the value.
//!
//! Two probes, [`read_u64_if_mapped`] and [`write_u64_if_writable`], are
//! of the other kind: any page fault at them but a reserved-bit one
//! resumes ([`any_fault_recovery_point`]), whatever the fault policy.
//! Tests use them to check that a translation is really gone, or that a
//! write is really refused.

use core::arch::global_asm;

global_asm!(
    ".section .text.recovery_probes, \"ax\"",
    // u64 probe_read_u64(const u64 *addr, u64 *out): 0 on success, 1 if it faulted.
    ".global probe_read_u64",
    "probe_read_u64:",
    "1: mov rax, [rdi]",
    "mov [rsi], rax",
    "xor eax, eax",
    "ret",
    "2: mov eax, 1",
    "ret",
    // u64 probe_write_u64(u64 *addr, u64 value): 0 on success, 1 if it faulted.
    ".global probe_write_u64",
    "probe_write_u64:",
    "3: mov [rdi], rsi",
    "xor eax, eax",
    "ret",
    "4: mov eax, 1",
    "ret",
    // u64 probe_read_if_mapped_u64(const u64 *addr, u64 *out): as probe_read_u64,
    // but every page fault at the access resumes.
    ".global probe_read_if_mapped_u64",
    "probe_read_if_mapped_u64:",
    "5: mov rax, [rdi]",
    "mov [rsi], rax",
    "xor eax, eax",
    "ret",
    "6: mov eax, 1",
    "ret",
    // u64 probe_write_if_writable_u64(u64 *addr, u64 value): as
    // probe_write_u64, but every page fault at the access resumes.
    ".global probe_write_if_writable_u64",
    "probe_write_if_writable_u64:",
    "7: mov [rdi], rsi",
    "xor eax, eax",
    "ret",
    "8: mov eax, 1",
    "ret",
    // Kind 0: the fault policy decides; kind 1: any page fault resumes.
    ".pushsection .recovery_table, \"a\"",
    ".balign 8",
    ".quad 1b, 2b, 0",
    ".quad 3b, 4b, 0",
    ".quad 5b, 6b, 1",
    ".quad 7b, 8b, 1",
    ".popsection",
);

unsafe extern "C" {
    fn probe_read_u64(addr: *const u64, out: *mut u64) -> u64;
    fn probe_write_u64(addr: *mut u64, value: u64) -> u64;
    fn probe_read_if_mapped_u64(addr: *const u64, out: *mut u64) -> u64;
    fn probe_write_if_writable_u64(addr: *mut u64, value: u64) -> u64;
    static __recovery_table_start: u8;
    static __recovery_table_end: u8;
}

/// The access faulted and the fault handler stopped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faulted;

/// Reads the word at `addr`; `Err` if the read faulted and was stopped.
///
/// # Safety
/// `addr` must be 8-byte aligned; if the read succeeds it must be a read
/// the caller is allowed to make (the probe only survives faults that a
/// fault policy chooses to stop).
pub unsafe fn read_u64(addr: *const u64) -> Result<u64, Faulted> {
    let mut value = 0;
    // SAFETY: the caller vouches for the address; a fault at the access is
    // either fatal or resumes at the recovery point, which returns 1.
    let status = unsafe { probe_read_u64(addr, &mut value) };
    if status == 0 { Ok(value) } else { Err(Faulted) }
}

/// Writes `value` at `addr`; `Err` if the write faulted and was stopped.
///
/// # Safety
/// As for [`read_u64`], and the write must not break anything the caller
/// does not own if it succeeds.
pub unsafe fn write_u64(addr: *mut u64, value: u64) -> Result<(), Faulted> {
    // SAFETY: as above.
    let status = unsafe { probe_write_u64(addr, value) };
    if status == 0 { Ok(()) } else { Err(Faulted) }
}

/// Reads the word at `addr`; `Err` if the read page-faulted because the
/// page is absent or its rights or key forbid it. A reserved-bit fault (a
/// corrupt paging structure) stays fatal. A key fault under
/// `pkfault=soft` is let through once, as everywhere, and the read
/// succeeds.
///
/// # Safety
/// `addr` must be 8-byte aligned and not a device register: if the read
/// succeeds it must be one the caller is allowed to make. Not from a #PF
/// handler: a fault there would reuse its IST stack and overwrite its
/// frame.
pub unsafe fn read_u64_if_mapped(addr: *const u64) -> Result<u64, Faulted> {
    let mut value = 0;
    // SAFETY: the caller vouches for the address; any #PF at the access
    // resumes at its recovery point, which returns 1.
    let status = unsafe { probe_read_if_mapped_u64(addr, &mut value) };
    if status == 0 { Ok(value) } else { Err(Faulted) }
}

/// Reads the user word at `addr` in the address space loaded on this CPU,
/// as [`read_u64_if_mapped`] does, with SMAP lifted (EFLAGS.AC) for that
/// one read only. For tests that check what a CPU's TLB still holds for a
/// user page; the kernel proper never reads user memory this way.
///
/// # Safety
/// As for [`read_u64_if_mapped`], and `addr` must be a user address.
pub unsafe fn read_user_u64_if_mapped(addr: *const u64) -> Result<u64, Faulted> {
    let smap = super::cpu::read_cr4() & super::pks::CR4_SMAP != 0;
    if smap {
        // SAFETY: sets EFLAGS.AC (SMAP is on, so STAC exists); cleared
        // right after the one read.
        unsafe { core::arch::asm!("stac", options(nostack)) };
    }
    // SAFETY: as the caller vouches.
    let value = unsafe { read_u64_if_mapped(addr) };
    if smap {
        // SAFETY: clears EFLAGS.AC again.
        unsafe { core::arch::asm!("clac", options(nostack)) };
    }
    value
}

/// Writes `value` at `addr`; `Err` if the write page-faulted because the
/// page is absent, read-only or its key forbids it (reserved-bit faults
/// stay fatal; `pkfault=soft` lets a key fault through once, as
/// everywhere). The attack tests use it to try a write and see whether it
/// landed.
///
/// # Safety
/// As for [`read_u64_if_mapped`], and a write that succeeds must not break
/// anything: write the value the word already holds, or a word the caller
/// owns.
pub unsafe fn write_u64_if_writable(addr: *mut u64, value: u64) -> Result<(), Faulted> {
    // SAFETY: the caller vouches for the address and value; any #PF at the
    // access resumes at its recovery point, which returns 1.
    let status = unsafe { probe_write_if_writable_u64(addr, value) };
    if status == 0 { Ok(()) } else { Err(Faulted) }
}

/// Recovery-table entry kinds, as the assembly above writes them.
const POLICY_DECIDES: u64 = 0;
const ANY_FAULT: u64 = 1;

fn recovery_table() -> &'static [[u64; 3]] {
    let start = (&raw const __recovery_table_start).cast::<[u64; 3]>();
    let end = (&raw const __recovery_table_end).cast::<[u64; 3]>();
    let count = (end as usize - start as usize) / size_of::<[u64; 3]>();
    // SAFETY: the linker script gathers the `.recovery_table` entries, each
    // three words, between the two symbols; the section is read-only.
    unsafe { core::slice::from_raw_parts(start, count) }
}

/// The recovery point for a faulting instruction at `rip`, if it is one
/// of the probes' accesses (for a fault policy that stops the access).
pub fn recovery_point(rip: u64) -> Option<u64> {
    recovery_table()
        .iter()
        .find(|entry| entry[0] == rip && matches!(entry[2], POLICY_DECIDES | ANY_FAULT))
        .map(|entry| entry[1])
}

/// The recovery point for a page fault with `error_code` at `rip` if the
/// access there survives it ([`read_u64_if_mapped`],
/// [`write_u64_if_writable`]): any page fault but a reserved-bit one.
pub fn any_fault_recovery_point(rip: u64, error_code: u64) -> Option<u64> {
    let reserved_bit = pkeys::PageFaultError::from_bits_retain(error_code)
        .contains(pkeys::PageFaultError::RESERVED_BIT);
    if reserved_bit {
        return None;
    }
    recovery_table()
        .iter()
        .find(|entry| entry[0] == rip && entry[2] == ANY_FAULT)
        .map(|entry| entry[1])
}
