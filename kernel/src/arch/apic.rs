//! The local APIC in xAPIC (MMIO) mode, and the PIT delays that the
//! INIT-SIPI-SIPI sequence needs.
//!
//! QEMU TCG 7.2 has no x2APIC (PLATFORM.md), so the registers are MMIO at
//! the MADT's local APIC base, mapped once, uncached, in the kernel space
//! through `paging`'s device path ([`crate::memory::paging::DeviceFrame`]):
//! not RAM, never executable, never unmapped. This module owns that page
//! and every access to it; the mapping is the same for every CPU (each
//! CPU's accesses reach its own APIC).
//!
//! Delays use PIT channel 2 in one-shot mode (mode 0), gated by port 0x61
//! and polled on its output bit: it counts at a fixed 1.193182 MHz on
//! every PC and under TCG follows QEMU's virtual clock, so no calibration
//! is needed (the TSC's rate is unknown until measured, and a calibrated
//! loop under TCG depends on the host's speed). Nothing else uses the PIT.

use core::sync::atomic::{AtomicU64, Ordering};
use x86::io::{inb, outb};

/// Moves the legacy 8259 PICs' vectors off the exception vectors (the
/// firmware leaves the master's IRQ 0, the PIT, on vector 8, #DF's) to
/// 0x20-0x2f and masks every line: no device interrupt is routed, and the
/// kernel must never see one dressed as an exception once it runs code
/// with interrupts on (user mode).
///
/// # Safety
/// Call once, on the boot CPU, at boot, before interrupts are ever on.
pub unsafe fn mask_legacy_pic() {
    const MASTER_COMMAND: u16 = 0x20;
    const MASTER_DATA: u16 = 0x21;
    const SLAVE_COMMAND: u16 = 0xa0;
    const SLAVE_DATA: u16 = 0xa1;
    // SAFETY: the PIC ports exist on every PC; the sequence is the 8259's
    // initialisation (ICW1 to ICW4), then the mask (OCW1), and nothing else
    // drives the PICs.
    unsafe {
        outb(MASTER_COMMAND, 0x11); // ICW1: initialise, ICW4 follows
        outb(SLAVE_COMMAND, 0x11);
        outb(MASTER_DATA, 0x20); // ICW2: vector base
        outb(SLAVE_DATA, 0x28);
        outb(MASTER_DATA, 0x04); // ICW3: slave on IRQ 2
        outb(SLAVE_DATA, 0x02);
        outb(MASTER_DATA, 0x01); // ICW4: 8086 mode
        outb(SLAVE_DATA, 0x01);
        outb(MASTER_DATA, 0xff); // every line masked
        outb(SLAVE_DATA, 0xff);
    }
}

/// Where the local APIC is mapped (the last page of the kernel space's
/// region, away from what tests map).
pub const APIC_VIRT: u64 =
    crate::memory::paging::KERNEL_MAP_BASE + crate::memory::paging::KERNEL_MAP_SIZE - 4096;

const REG_ID: u64 = 0x20;
const REG_SVR: u64 = 0xf0;
const REG_ESR: u64 = 0x280;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_EOI: u64 = 0xb0;
/// The vector of the kernel's own inter-processor interrupts: a CPU
/// parked in `smp` wakes on it and looks for work.
pub const IPI_VECTOR: u8 = 0xf0;
/// ICR: fixed delivery, level assert; the low byte is the vector.
const ICR_FIXED: u32 = 0x0000_4000;
/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// The spurious vector (the IDT reports it as unexpected if it comes).
const SPURIOUS_VECTOR: u32 = 0xff;
/// ICR: delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;
/// ICR: INIT, level assert.
const ICR_INIT: u32 = 0x0000_4500;
/// ICR: start-up, level assert; the low byte is the vector (page number).
const ICR_STARTUP: u32 = 0x0000_4600;

/// Set once the page is mapped: its virtual address.
static MAPPED: AtomicU64 = AtomicU64::new(0);

/// Why the APIC could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The MADT's base is not a device page (RAM, or misaligned).
    NotDevice(u64),
    /// The kernel space refused the mapping.
    Map(crate::memory::paging::PagingError),
    /// No kernel space yet.
    NoKernelSpace,
    /// An IPI stayed pending.
    SendTimeout,
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotDevice(phys) => write!(f, "local APIC base {phys:#x} is not a device page"),
            Self::Map(error) => write!(f, "mapping the local APIC failed: {error:?}"),
            Self::NoKernelSpace => write!(f, "no kernel space to map the local APIC in"),
            Self::SendTimeout => write!(f, "an IPI stayed pending for 10 ms"),
        }
    }
}

/// Maps the local APIC at physical `phys` (once; later calls check it is
/// the same page) and enables it on this CPU.
pub fn init(phys: u64, memory: &boot::memory_map::MemoryMap) -> Result<(), ApicError> {
    use crate::memory::paging::{DeviceFrame, kernel_space};
    if MAPPED.load(Ordering::Acquire) == 0 {
        let device = DeviceFrame::new(phys, memory).map_err(|_| ApicError::NotDevice(phys))?;
        let space = kernel_space().ok_or(ApicError::NoKernelSpace)?;
        space
            .map_device(APIC_VIRT, device)
            .map_err(ApicError::Map)?;
        MAPPED.store(APIC_VIRT, Ordering::Release);
    }
    enable();
    Ok(())
}

fn read(reg: u64) -> u32 {
    let base = MAPPED.load(Ordering::Acquire);
    // SAFETY: callers run after `init` mapped the APIC page (uncached,
    // writable) at `base`; `reg` is a register offset inside it.
    unsafe { ((base + reg) as *const u32).read_volatile() }
}

fn write(reg: u64, value: u32) {
    let base = MAPPED.load(Ordering::Acquire);
    // SAFETY: as in `read`.
    unsafe { ((base + reg) as *mut u32).write_volatile(value) };
}

/// Enables this CPU's APIC (software enable, spurious vector 0xff). Needs
/// [`init`] to have mapped the page; does nothing before.
pub fn enable() {
    if MAPPED.load(Ordering::Acquire) == 0 {
        return;
    }
    write(REG_SVR, read(REG_SVR) | SVR_ENABLE | SPURIOUS_VECTOR);
}

/// This CPU's APIC id, from the APIC (CPUID before it is mapped).
pub fn id() -> u32 {
    if MAPPED.load(Ordering::Acquire) == 0 {
        return super::cpu::current_cpu_id();
    }
    read(REG_ID) >> 24
}

/// Sends [`IPI_VECTOR`] to the CPU with `apic_id`.
pub fn send_ipi(apic_id: u32) -> Result<(), ApicError> {
    send(apic_id, ICR_FIXED | u32::from(IPI_VECTOR))
}

/// Ends the interrupt being handled (end-of-interrupt).
pub fn eoi() {
    if MAPPED.load(Ordering::Acquire) != 0 {
        write(REG_EOI, 0);
    }
}

fn send(apic_id: u32, command: u32) -> Result<(), ApicError> {
    write(REG_ESR, 0);
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, command);
    for _ in 0..100 {
        if read(REG_ICR_LOW) & ICR_PENDING == 0 {
            return Ok(());
        }
        delay_us(100);
    }
    Err(ApicError::SendTimeout)
}

/// INIT-SIPI-SIPI to `apic_id` with start-up page `page` (a physical page
/// number below 0x100), with the delays of the Intel SDM (vol. 3, 9.4.4):
/// 10 ms after INIT, 200 us after each SIPI. The second SIPI is skipped
/// if `started()` already says the CPU runs (a second one would restart
/// it on modern CPUs only if it were still waiting, but need not be sent).
pub fn start_cpu(apic_id: u32, page: u8, started: impl Fn() -> bool) -> Result<(), ApicError> {
    send(apic_id, ICR_INIT)?;
    delay_us(10_000);
    for _ in 0..2 {
        send(apic_id, ICR_STARTUP | u32::from(page))?;
        delay_us(200);
        if started() {
            break;
        }
    }
    Ok(())
}

/// Sends INIT alone: puts a CPU that did not come online back into
/// wait-for-SIPI, so it cannot run the trampoline once it is gone.
pub fn park_cpu(apic_id: u32) -> Result<(), ApicError> {
    send(apic_id, ICR_INIT)
}

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;

/// Waits `us` microseconds on PIT channel 2 (one-shot chunks of at most
/// 50 ms).
pub fn delay_us(us: u64) {
    let mut left = us;
    while left > 0 {
        let chunk = left.min(50_000);
        left -= chunk;
        let count = (chunk * PIT_HZ / 1_000_000).clamp(1, 0xffff) as u16;
        // SAFETY: ports 0x42, 0x43 and 0x61 are PIT channel 2, the PIT
        // mode register and the speaker/gate port on every PC; only this
        // function touches them, and it keeps the speaker off (bit 1).
        unsafe {
            // Gate off, speaker off.
            let gate = inb(0x61) & !0x03;
            outb(0x61, gate);
            // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
            outb(0x43, 0b1011_0000);
            outb(0x42, count as u8);
            outb(0x42, (count >> 8) as u8);
            // Gate on: counting starts; bit 5 of 0x61 rises at zero.
            outb(0x61, gate | 0x01);
            while inb(0x61) & 0x20 == 0 {
                core::hint::spin_loop();
            }
            outb(0x61, gate);
        }
    }
}
