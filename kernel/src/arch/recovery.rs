//! Memory probes that may fault, and the recovery points that let the
//! kernel resume after them.
//!
//! Each probe's one memory access has an entry in the `.recovery_table`
//! section: (address of the access, address to resume at). A fault handler
//! that decides to stop the faulting operation (`pkfault=report`) looks the
//! faulting RIP up with [`recovery_point`]; if found, it resumes there and
//! the probe returns an error instead of the value.

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
    ".pushsection .recovery_table, \"a\"",
    ".quad 1b, 2b",
    ".quad 3b, 4b",
    ".popsection",
);

unsafe extern "C" {
    fn probe_read_u64(addr: *const u64, out: *mut u64) -> u64;
    fn probe_write_u64(addr: *mut u64, value: u64) -> u64;
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

/// The recovery point for a faulting instruction at `rip`, if it is one
/// of the probes' accesses.
pub fn recovery_point(rip: u64) -> Option<u64> {
    let start = (&raw const __recovery_table_start).cast::<[u64; 2]>();
    let end = (&raw const __recovery_table_end).cast::<[u64; 2]>();
    let count = (end as usize - start as usize) / size_of::<[u64; 2]>();
    // SAFETY: the linker script gathers the `.recovery_table` entries, each
    // two words, between the two symbols; the section is read-only.
    let table = unsafe { core::slice::from_raw_parts(start, count) };
    table
        .iter()
        .find(|entry| entry[0] == rip)
        .map(|entry| entry[1])
}
