//! The CPUs, from ACPI's MADT, parsed by the `acpi` crate (5.x: 6.x needs
//! nightly).
//!
//! Owns the [`AcpiHandler`] the crate maps tables through, and promises a
//! [`CpuList`] or a typed [`AcpiFailure`] that boot reports and answers
//! with one CPU: bad or missing tables never panic.
//!
//! **How tables are reached: the direct map, read only, after a pre-walk.**
//! The handler hands out direct-map addresses, nothing else: no new
//! mapping is made, so nothing must be torn down, and the crate only ever
//! reads. The direct map covers every usable region widened to 2 MiB; on
//! QEMU the RSDP lies in the BIOS area below 1 MiB and the tables at the
//! top of RAM below 4 GiB, both inside that widening. Firmware may put
//! them elsewhere (a reserved range the direct map does not cover), and
//! the crate's handler has no way to fail, so before the crate runs, a
//! pre-walk reads the RSDP, the root table and every table header it lists
//! through `memory::KernelPhys` (which refuses what is not mapped) and
//! checks that the direct map covers each whole table. If one is not
//! covered, the answer is [`AcpiFailure::NotMapped`] and one CPU, with a
//! report line saying where; mapping such tables read-only through the
//! kernel space (a firmware twin of `paging::DeviceFrame`) is the step
//! after this one. What the direct map shows is RAM the kernel reads
//! anyway, so this opens nothing.

use super::percpu::MAX_CPUS;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use boot::start_info::PhysMemory;
use core::ptr::NonNull;

/// Local APIC ids the MADT lists beyond what is kept.
pub const MAX_LISTED: usize = 256;

/// The CPUs the MADT lists.
#[derive(Clone, Debug)]
pub struct CpuList {
    /// Enabled processors' local APIC ids, the boot CPU first, then in
    /// MADT order; at most [`MAX_CPUS`].
    pub apic_ids: heapless::Vec<u32, MAX_CPUS>,
    /// Enabled processors past [`MAX_CPUS`] (not started).
    pub beyond_limit: heapless::Vec<u32, MAX_LISTED>,
    /// Entries flagged disabled (and not online-capable).
    pub disabled: u32,
    /// x2APIC entries (ids past 254), which xAPIC cannot start.
    pub x2apic_entries: u32,
    /// The local APIC's physical base (with the override entry applied).
    pub local_apic_base: u64,
}

/// Why the MADT gave no CPU list.
#[derive(Debug)]
pub enum AcpiFailure {
    /// The boot information named no RSDP.
    NoRsdp,
    /// A table (the RSDP, a root-table entry, ...) at this address is not
    /// in the direct map.
    NotMapped(u64),
    /// The root table lists too many tables (limit 256).
    TooManyTables,
    /// The crate refused the tables.
    Invalid(acpi::AcpiError),
    /// The MADT does not list the boot CPU's APIC id.
    BootCpuMissing(u32),
}

impl core::fmt::Display for AcpiFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "no RSDP given"),
            Self::NotMapped(phys) => write!(f, "the table at {phys:#x} is outside the direct map"),
            Self::TooManyTables => write!(f, "the root table lists more than 256 tables"),
            Self::Invalid(error) => write!(f, "invalid tables: {error:?}"),
            Self::BootCpuMissing(id) => {
                write!(f, "the MADT does not list the boot CPU (APIC id {id})")
            }
        }
    }
}

/// Maps through the direct map (module doc).
#[derive(Clone, Copy, Debug)]
struct DirectMapHandler;

impl AcpiHandler for DirectMapHandler {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = crate::memory::direct_map::info()
            .and_then(|info| {
                crate::memory::direct_map::phys_to_virt(info, phys as u64, size as u64)
            })
            .and_then(|virt| NonNull::new(virt as *mut T));
        // The pre-walk checked every table the crate reads is covered.
        let Some(virt) = virt else {
            panic!("acpi: {size} bytes at {phys:#x} are not in the direct map after the pre-walk")
        };
        // SAFETY: the direct map maps `size` bytes at `phys` readable at
        // `virt` for the kernel's life; the crate only reads them.
        unsafe { PhysicalMapping::new(phys, virt, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn read_u32(phys: u64) -> Result<u32, AcpiFailure> {
    let mut bytes = [0u8; 4];
    crate::memory::KernelPhys
        .read(phys, &mut bytes)
        .ok_or(AcpiFailure::NotMapped(phys))?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(phys: u64) -> Result<u64, AcpiFailure> {
    Ok(u64::from(read_u32(phys)?) | (u64::from(read_u32(phys + 4)?) << 32))
}

/// Checks the whole table at `phys` (its header's length) is covered.
fn check_table(phys: u64) -> Result<u32, AcpiFailure> {
    let covered =
        |len: u64| crate::memory::direct_map::info().is_some_and(|info| info.covers(phys, len));
    if !covered(36) {
        return Err(AcpiFailure::NotMapped(phys));
    }
    let length = read_u32(phys + 4)?;
    if !covered(u64::from(length).max(36)) {
        return Err(AcpiFailure::NotMapped(phys));
    }
    Ok(length)
}

/// The pre-walk (module doc): everything the crate will read is covered.
fn pre_walk(rsdp: u64) -> Result<(), AcpiFailure> {
    if !crate::memory::direct_map::info().is_some_and(|info| info.covers(rsdp, 36)) {
        return Err(AcpiFailure::NotMapped(rsdp));
    }
    let mut revision = [0u8];
    crate::memory::KernelPhys
        .read(rsdp + 15, &mut revision)
        .ok_or(AcpiFailure::NotMapped(rsdp))?;
    // The crate's choice: revision 0 uses the RSDT, later ones the XSDT.
    let (root, entry_size) = if revision[0] == 0 {
        (u64::from(read_u32(rsdp + 16)?), 4)
    } else {
        (read_u64(rsdp + 24)?, 8)
    };
    let length = u64::from(check_table(root)?);
    let entries = length.saturating_sub(36) / entry_size;
    if entries > 256 {
        return Err(AcpiFailure::TooManyTables);
    }
    for i in 0..entries {
        let at = root + 36 + i * entry_size;
        let table = if entry_size == 4 {
            u64::from(read_u32(at)?)
        } else {
            read_u64(at)?
        };
        check_table(table)?;
    }
    Ok(())
}

/// The MADT's processors, for a boot CPU with local APIC id `boot_apic_id`.
pub fn find_cpus(rsdp: Option<u64>, boot_apic_id: u32) -> Result<CpuList, AcpiFailure> {
    let rsdp = rsdp.ok_or(AcpiFailure::NoRsdp)?;
    pre_walk(rsdp)?;
    // SAFETY: the pre-walk found an RSDP-sized, mapped region there; the
    // crate validates its signature and checksum before trusting it.
    let tables = unsafe { AcpiTables::from_rsdp(DirectMapHandler, rsdp as usize) }
        .map_err(AcpiFailure::Invalid)?;
    let madt = tables.find_table::<Madt>().map_err(AcpiFailure::Invalid)?;
    let madt = madt.get();
    let mut list = CpuList {
        apic_ids: heapless::Vec::new(),
        beyond_limit: heapless::Vec::new(),
        disabled: 0,
        x2apic_entries: 0,
        local_apic_base: u64::from(madt.local_apic_address),
    };
    let mut enabled: heapless::Vec<u32, MAX_LISTED> = heapless::Vec::new();
    for entry in madt.entries() {
        match entry {
            MadtEntry::LocalApic(cpu) => {
                let flags = { cpu.flags };
                // Bit 0: enabled; bit 1: online capable (may be enabled
                // later; not started here).
                if flags & 1 == 0 {
                    list.disabled += 1;
                } else if enabled.push(u32::from(cpu.apic_id)).is_err() {
                    // More than MAX_LISTED: counted as beyond the limit.
                    let _ = list.beyond_limit.push(u32::from(cpu.apic_id));
                }
            }
            MadtEntry::LocalX2Apic(_) => list.x2apic_entries += 1,
            MadtEntry::LocalApicAddressOverride(entry) => {
                list.local_apic_base = entry.local_apic_address;
            }
            _ => {}
        }
    }
    if !enabled.contains(&boot_apic_id) {
        return Err(AcpiFailure::BootCpuMissing(boot_apic_id));
    }
    // The boot CPU is CPU 0; the others follow in MADT order.
    let others = enabled.iter().copied().filter(|&id| id != boot_apic_id);
    for id in core::iter::once(boot_apic_id).chain(others) {
        if list.apic_ids.push(id).is_err() {
            let _ = list.beyond_limit.push(id);
        }
    }
    Ok(list)
}
