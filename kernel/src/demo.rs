//! The write-what-where demonstration (`demo=pte`).
//!
//! A simulated kernel memory-corruption bug writes an attacker-chosen
//! value into a live page-table entry: the ephemeral slot's PTE, so that
//! the slot would map a frame holding a kernel secret, read-write. What
//! happens depends on the policy:
//! - `ptprot=pks`: the table carries key 1, write-disabled outside windows,
//!   so the write faults with the PK bit and `pkfault=` decides: `panic`
//!   stops the machine with a report, `report` stops the write (the entry
//!   is unchanged), `soft` lets it through once and logs it;
//! - `ptprot=none`: the write lands, and the demo reads the secret through
//!   the hijacked mapping, then has `ephemeral` repair the entry;
//! - `ptprot=ro`: the table is read-only, so the write faults (a plain
//!   write-protection fault, which stops the machine).
//!
//! The stray write goes through a recovery-point probe, the way a real bug
//! would be just a store: the probe only lets `pkfault=report` stop it.

use crate::arch::cpu;
use crate::arch::recovery::{self, Faulted};
use crate::memory::ephemeral::{EPHEMERAL_BASE, slot_entry};
use crate::println;
use boot::layout::KERNEL_VIRT;

/// What the attacker wants to read.
static SECRET: [u8; 32] = *b"kernel secret: 0123456789abcdef!";

const PRESENT_WRITABLE: u64 = 0b11;

/// Runs the demonstration and says what happened.
pub fn run() {
    let entry = slot_entry();
    let secret_phys = (&raw const SECRET) as u64 - KERNEL_VIRT;
    let frame = secret_phys & !0xfff;
    let evil = frame | PRESENT_WRITABLE;
    println!("demo: a simulated kernel bug writes a live page-table entry (write-what-where)");
    println!(
        "demo: target: the entry mapping {:#x}, at {:#x} (a page table with key {})",
        EPHEMERAL_BASE,
        entry as u64,
        pkeys::key::pte_key(
            crate::memory::walk::leaf(cpu::read_cr3(), entry as u64).map_or(0, |l| l.entry)
        )
        .index()
    );
    println!(
        "demo: value: {:#x}, mapping the frame that holds a kernel secret, writable",
        evil
    );
    // SAFETY: not safe, on purpose: this is the bug. The entry is a live
    // PTE; if the write lands, the demo repairs it below.
    let result = unsafe { recovery::write_u64(entry, evil) };
    match result {
        Err(Faulted) => {
            let fault = crate::pkfault::last_fault();
            match fault {
                Some(fault) => println!("demo: the write faulted: {}", fault),
                None => println!("demo: the write faulted"),
            }
            // SAFETY: reading the entry (page tables are readable).
            let now = unsafe { entry.read_volatile() };
            println!(
                "demo: the entry is unchanged ({:#x}): page tables are protected",
                now
            );
        }
        Ok(()) => {
            // SAFETY: invalidating one translation is always safe.
            unsafe { x86::tlb::flush(EPHEMERAL_BASE as usize) };
            let offset = secret_phys & 0xfff;
            let mut stolen = [0u8; 32];
            for (i, byte) in stolen.iter_mut().enumerate() {
                // SAFETY: the hijacked entry maps the secret's frame here.
                *byte =
                    unsafe { ((EPHEMERAL_BASE + offset + i as u64) as *const u8).read_volatile() };
            }
            println!(
                "demo: the write landed: {:#x} now maps the secret's frame, read-write; it reads \"{}\"",
                EPHEMERAL_BASE,
                core::str::from_utf8(&stolen).unwrap_or("<not text>")
            );
            if crate::pkfault::policy() == Some(pkeys::FaultPolicy::Soft) {
                println!("demo: pkfault=soft let the faulting write through once (logged on COM2)");
            } else {
                println!(
                    "demo: any kernel write bug can map any memory like this: page tables are NOT protected"
                );
            }
            crate::memory::ephemeral::repair_slot();
        }
    }
}
