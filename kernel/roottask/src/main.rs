//! The root task: the first ring-3 program. It reads the boot-info frame
//! the kernel gave it, prints what it received (its fixed capability
//! slots, its Untyped budget, its IPC buffer) and exits with status 0.
//!
//! The runtime (entry point, system calls, `println!`, panic handler) is
//! in [`rt`]; its module doc states the entry convention. To write your
//! own root task, start from this crate (README, "Your own root task").

#![no_std]
#![no_main]

mod rt;

use abi::{BootInfo, InitCap};

/// Exit status when the boot-info frame is not what `abi` describes.
const BAD_BOOT_INFO: u64 = 2;

/// The program: `boot_info` is the address the kernel passed in rdi.
fn main(boot_info: u64) -> u64 {
    println!("roottask: hello from ring 3");
    let Some(info) = read_boot_info(boot_info) else {
        println!("roottask: no boot-info frame at {boot_info:#x}");
        return BAD_BOOT_INFO;
    };
    if let Err(error) = info.check() {
        println!("roottask: the boot-info frame at {boot_info:#x} is not valid: {error:?}");
        return BAD_BOOT_INFO;
    }
    println!(
        "roottask: boot info at {boot_info:#x}: version {}, node {} of {}",
        info.magic & 0xffff,
        info.node_id,
        info.node_count
    );
    println!(
        "roottask: root CNode: radix {} ({} slots)",
        info.root_cnode_radix,
        1u64 << info.root_cnode_radix
    );
    print!("roottask: fixed cap slots (no caps in them until the capability step):");
    for cap in InitCap::ALL.iter().skip(1) {
        print!(" {}={:?}", cap.slot(), cap);
    }
    println!();
    let total: u64 = info.untyped_budgets().map(|(_, bytes)| bytes).sum();
    println!(
        "roottask: untyped: slots {}..{}, {} caps, budget {} bytes",
        info.untyped.start,
        info.untyped.end,
        info.untyped.len(),
        total
    );
    for (slot, bytes) in info.untyped_budgets() {
        println!("roottask:   slot {slot}: {bytes} bytes");
    }
    println!(
        "roottask: empty slots {}..{}",
        info.empty.start, info.empty.end
    );
    println!("roottask: IPC buffer at {:#x}", info.ipc_buffer);
    println!(
        "roottask: image [{:#x}, {:#x})",
        info.image_start, info.image_end
    );
    println!("roottask: done, exiting with status 0");
    0
}

/// The boot-info frame at `address`, if the address could hold one.
fn read_boot_info(address: u64) -> Option<&'static BootInfo> {
    let aligned = address.is_multiple_of(core::mem::align_of::<BootInfo>() as u64);
    if address == 0 || !aligned {
        return None;
    }
    // SAFETY: the kernel maps the boot-info frame read-only at this
    // address (rdi at entry) for the program's whole life, holding a
    // `BootInfo` (all integers: any bits are a value); non-null and
    // aligned, checked above. Nothing writes it.
    Some(unsafe { &*(address as *const BootInfo) })
}
