//! The root task: the first ring-3 program. It reads the boot-info frame
//! the kernel gave it, prints what it received (its fixed caps, its
//! Untyped budget, the caps of its own tables and frames, its IPC
//! buffer), spends and refunds a little of the budget to show the caps
//! work, and exits with status 0.
//!
//! The runtime (entry point, system calls, `println!`, panic handler) is
//! in [`rt`]; its module doc states the entry convention. To write your
//! own root task, start from this crate (README, "Your own root task").

#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "the runtime serves both programs; each uses part of it"
)]
mod rt;

use abi::{BootInfo, InitCap, InvocationLabel, IpcBuffer, ObjectType};

/// Exit status when the boot-info frame is not what `abi` describes.
const BAD_BOOT_INFO: u64 = 2;

/// The program: `boot_info` is the address the kernel passed in rdi (the
/// argument in rsi is 0 for the root task).
fn main(boot_info: u64, _argument: u64) -> u64 {
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
    print!("roottask: fixed caps:");
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
        "roottask: caps of its own tables and frames: slots {}..{} ({} caps)",
        info.mappings.start,
        info.mappings.end,
        info.mappings.len()
    );
    println!(
        "roottask: empty slots {}..{}",
        info.empty.start, info.empty.end
    );
    println!("roottask: IPC buffer at {:#x}", info.ipc_buffer);
    println!(
        "roottask: image [{:#x}, {:#x})",
        info.image_start, info.image_end
    );
    if let Err(error) = spend_and_refund(info) {
        println!("roottask: an invocation failed: {error:?}");
        return INVOCATION_FAILED;
    }
    println!("roottask: done, exiting with status 0");
    0
}

/// Exit status when an invocation of the demonstration fails.
const INVOCATION_FAILED: u64 = 3;

/// Retypes a 4 KiB frame from the first Untyped into the first empty slot,
/// then deletes it: the budget left goes down by 4096 bytes, then back.
fn spend_and_refund(info: &BootInfo) -> Result<(), abi::Error> {
    let (Some((untyped, _)), false) = (info.untyped_budgets().next(), info.empty.is_empty()) else {
        println!("roottask: no Untyped or no empty slot: nothing to spend");
        return Ok(());
    };
    // SAFETY: the kernel maps the IPC buffer read-write at this address
    // for the thread's whole life, and nothing else in this program
    // refers to it; an `IpcBuffer` is all integers.
    let buffer = unsafe { &mut *(info.ipc_buffer as *mut IpcBuffer) };
    let root = InitCap::InitThreadCNode.slot();
    let slot = info.empty.start;
    let before = rt::debug_summary()[3];
    let retype = [ObjectType::Frame4K.number(), 0, 0, 0, 0, slot, 1];
    rt::invoke(
        buffer,
        untyped,
        InvocationLabel::UntypedRetype,
        &retype,
        &[root],
    )?;
    let spent = before - rt::debug_summary()[3];
    rt::invoke(buffer, root, InvocationLabel::CNodeDelete, &[slot, 64], &[])?;
    let refunded = rt::debug_summary()[3] - (before - spent);
    println!(
        "roottask: retyped a 4 KiB frame into slot {slot}: {spent} budget bytes spent, {refunded} refunded on delete"
    );
    Ok(())
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
