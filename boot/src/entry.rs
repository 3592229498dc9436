//! The PVH entry: from 32-bit protected mode to the kernel's Rust entry.
//!
//! QEMU enters `pvh_start32` with paging off, flat 32-bit segments, and the
//! physical address of `hvm_start_info` in `%ebx`. The stub:
//! 1. checks, from the memory map in `hvm_start_info`, that RAM holds the
//!    whole image, `.bss` included; if not, it prints one line on COM1
//!    naming where RAM ends and [`MIN_MEMORY`], and exits with the
//!    not-enough-memory status (39) before writing anything;
//! 2. zeroes `.bss` (QEMU's loader leaves whatever the firmware left there);
//! 3. builds the boot page tables: physical [0, 1 GiB) mapped with 2 MiB
//!    pages both at 0 (identity, needed while the jump is in flight) and at
//!    [`KERNEL_VIRT`], except that the image's place ([`KERNEL_IMAGE_MAX`]
//!    from [`KERNEL_PHYS`]) is mapped with 4 KiB pages, one page table per
//!    2 MiB, so the page below the boot stack can stay unmapped as a guard
//!    and the kernel can apply W^X page by page;
//! 4. enables PAE, long mode and paging, and far-jumps into 64-bit code;
//! 5. jumps to the higher half, switches to the boot stack, drops the
//!    identity mapping (so null and low addresses fault), and calls
//!    `kernel_boot_entry(start_info_phys: u64) -> !`, which the kernel
//!    binary must define with `#[unsafe(no_mangle)] extern "C"`.
//!
//! The tables live in the kernel image's `.bss`; [`boot_stub_tables`] lists
//! them so they can be recorded as early page tables. The stub also exports
//! the layout constants as absolute symbols, which `kernel.ld` checks
//! against its own copies.

use crate::early_tables::{EarlyPageTable, TableLevel, TableOrigin};
use crate::exit_status;
use crate::layout::{
    BOOT_WINDOW_SIZE, IMAGE_PAGE_TABLES, KERNEL_IMAGE_MAX, KERNEL_PHYS, KERNEL_VIRT, MIN_MEMORY,
    MIN_MEMORY_IMAGE_MAX,
};
use crate::start_info::{MEMMAP_ENTRY_SIZE, START_INFO_MAGIC};
use core::ops::Range;

/// Size of the stack `kernel_boot_entry` runs on. Boot builds large
/// structures on it (the page allocator, with a cache per CPU, is about
/// 90 KiB before it lands in its static); [`boot_stack_high_water`]
/// measures use (233 KiB at most so far). The kernel image must fit in
/// [`KERNEL_IMAGE_MAX`] (and in [`MIN_MEMORY_IMAGE_MAX`] for the minimum
/// memory to hold), so the stack cannot simply grow.
pub const BOOT_STACK_SIZE: usize = 512 * 1024;

const PAGE_SIZE: usize = 4096;
const LARGE_PAGE_SIZE: u64 = 2 << 20;

// The boot window is one page directory of 2 MiB pages.
const _: () = assert!(BOOT_WINDOW_SIZE == 512 * LARGE_PAGE_SIZE);
// The image's place is whole 2 MiB pages of that directory, one page
// table each.
const _: () = assert!(KERNEL_PHYS.is_multiple_of(LARGE_PAGE_SIZE));
const _: () = assert!(IMAGE_PAGE_TABLES as u64 * LARGE_PAGE_SIZE == KERNEL_IMAGE_MAX);
const _: () = assert!((KERNEL_PHYS / LARGE_PAGE_SIZE) as usize + IMAGE_PAGE_TABLES <= 512);

core::arch::global_asm!(
    r#"
    .set KERNEL_VIRT, {kernel_virt}
    .set KERNEL_PHYS, {kernel_phys}
    .set PTE_PRESENT_WRITABLE, 0x3
    .set PDE_LARGE, 0x83
    .set CR4_PAE, 1 << 5
    .set EFER_MSR, 0xc0000080
    .set EFER_LME, 1 << 8
    .set CR0_PE_PG, (1 << 0) | (1 << 31)
    .set START_INFO_MAGIC, {start_info_magic}
    .set MEMMAP_ENTRY_SIZE, {memmap_entry_size}
    .set E820_RAM, 1
    .set COM1, 0x3f8
    .set DEBUG_EXIT_PORT, {debug_exit_port}
    .set NOT_ENOUGH_MEMORY, {not_enough_memory}

    .set IMAGE_PAGE_TABLES, {image_page_tables}

    /* kernel.ld asserts these equal its own KERNEL_PHYS and KERNEL_VIRT,
       and the image ends inside the two limits. */
    .global __layout_kernel_phys, __layout_kernel_virt
    .global __layout_kernel_image_max, __layout_min_memory_image_max
    .set __layout_kernel_phys, KERNEL_PHYS
    .set __layout_kernel_virt, KERNEL_VIRT
    .set __layout_kernel_image_max, {kernel_image_max}
    .set __layout_min_memory_image_max, {min_memory_image_max}

    /* Xen ELF note type 18 (XEN_ELFNOTE_PHYS32_ENTRY): where QEMU enters. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_start32

    .section .boot.text32, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi                      /* hvm_start_info, kept until the call */

    /* Before .bss is touched: does RAM hold the whole image? With too
       little memory, .bss runs past the end of RAM and the first static
       the kernel writes is lost. The check reads the memory map in
       hvm_start_info; if the structure looks wrong (bad magic, version 0,
       a map above 4 GiB) it is skipped, and the kernel's parser reports
       the structure instead. %edi = end of the RAM region holding the
       image's start, 0 if none. */
    cmpl $START_INFO_MAGIC, (%esi)
    jne 19f
    cmpl $1, 4(%esi)
    jb 19f
    cmpl $0, 44(%esi)
    jne 19f
    mov 40(%esi), %ebx                  /* memmap_paddr */
    mov 48(%esi), %ecx                  /* memmap_entries */
    xor %edi, %edi
10: test %ecx, %ecx
    jz 13f
    cmpl $E820_RAM, 16(%ebx)
    jne 12f
    cmpl $0, 4(%ebx)                    /* starts above 4 GiB */
    jne 12f
    mov (%ebx), %eax
    cmp $KERNEL_PHYS, %eax
    ja 12f
    mov 8(%ebx), %edx                   /* end = addr + size, 64 bits ... */
    mov 12(%ebx), %ebp
    add %eax, %edx
    adc $0, %ebp
    jz 11f
    mov $0xffffffff, %edx               /* ... saturated at 4 GiB */
11: cmp $KERNEL_PHYS, %edx
    jbe 12f
    mov %edx, %edi
12: add $MEMMAP_ENTRY_SIZE, %ebx
    dec %ecx
    jmp 10b
13: cmp $(__bss_end - KERNEL_VIRT), %edi
    jae 19f

    /* Too little: say so on COM1 (no stack here, so no calls), then
       exit through the debug-exit device with NOT_ENOUGH_MEMORY. */
    mov $COM1, %dx
    mov $boot_memory_message, %ebx
14: movb (%ebx), %al
    test %al, %al
    jz 15f
    outb %al, %dx
    inc %ebx
    jmp 14b
15: mov $8, %ecx                        /* %edi as 8 hex digits */
16: rol $4, %edi
    mov %edi, %eax
    and $0xf, %eax
    movb boot_hex_digits(%eax), %al
    outb %al, %dx
    loop 16b
    mov $boot_memory_message_end, %ebx
17: movb (%ebx), %al
    test %al, %al
    jz 18f
    outb %al, %dx
    inc %ebx
    jmp 17b
18: mov $DEBUG_EXIT_PORT, %dx
    mov $NOT_ENOUGH_MEMORY, %eax
    outl %eax, %dx
    hlt                                 /* no exit device: stop here */
    jmp 18b
19:

    /* Zero .bss: page tables, stacks and statics all start at zero. */
    mov $(__bss_start - KERNEL_VIRT), %edi
    mov $(__bss_end - KERNEL_VIRT), %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> identity PDPT, PML4[511] -> high PDPT */
    mov $(boot_pdpt_low - KERNEL_VIRT + PTE_PRESENT_WRITABLE), %eax
    mov %eax, (boot_pml4 - KERNEL_VIRT)
    mov $(boot_pdpt_high - KERNEL_VIRT + PTE_PRESENT_WRITABLE), %eax
    mov %eax, (boot_pml4 - KERNEL_VIRT + 511 * 8)
    /* both PDPTs share one PD: identity PDPT[0], high PDPT[510] (-2 GiB) */
    mov $(boot_pd - KERNEL_VIRT + PTE_PRESENT_WRITABLE), %eax
    mov %eax, (boot_pdpt_low - KERNEL_VIRT)
    mov %eax, (boot_pdpt_high - KERNEL_VIRT + 510 * 8)

    /* PD: 512 entries of 2 MiB covering physical [0, 1 GiB) */
    mov $(boot_pd - KERNEL_VIRT), %edi
    mov $PDE_LARGE, %eax
    mov $512, %ecx
1:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 1b

    /* The image's place again, as 4 KiB pages: its page tables are
       consecutive, so one run of entries fills them all ... */
    mov $(boot_pt_image - KERNEL_VIRT), %edi
    mov $(KERNEL_PHYS + PTE_PRESENT_WRITABLE), %eax
    mov $(512 * IMAGE_PAGE_TABLES), %ecx
2:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 2b
    /* ... minus the guard page below the boot stack ... */
    mov $(boot_stack_guard - KERNEL_VIRT - KERNEL_PHYS), %eax
    shr $12, %eax
    movl $0, (boot_pt_image - KERNEL_VIRT)(, %eax, 8)
    /* ... replacing the PD's 2 MiB entries for them. */
    mov $(boot_pt_image - KERNEL_VIRT + PTE_PRESENT_WRITABLE), %eax
    mov $(boot_pd - KERNEL_VIRT + (KERNEL_PHYS >> 21) * 8), %edi
    mov $IMAGE_PAGE_TABLES, %ecx
4:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 4b

    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $(boot_pml4 - KERNEL_VIRT), %eax
    mov %eax, %cr3
    mov $EFER_MSR, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $CR0_PE_PG, %eax
    mov %eax, %cr0

    lgdt (boot_gdt_pointer32)
    ljmp $0x08, $pvh_start64_low

    .code64
pvh_start64_low:
    movabs $pvh_start64_high, %rax
    jmp *%rax

    .section .boot.rodata, "a"
    /* The kernel's refusal line reads the same from here (see
       kernel/src/memory/mod.rs, which checks the rest of what boot needs). */
boot_memory_message:
    .asciz "boot: not enough memory: the RAM holding the kernel image ends at 0x"
boot_memory_message_end:
    .asciz ", before the image does; pks-kernel needs at least {min_mib} MiB (QEMU -m {min_mib}M)\n"
boot_hex_digits:
    .ascii "0123456789abcdef"
    .balign 8
boot_gdt:
    .quad 0                             /* null */
    .quad 0x00af9a000000ffff            /* 0x08: 64-bit code, ring 0 */
    .quad 0x00cf92000000ffff            /* 0x10: data, ring 0 */
boot_gdt_end:
boot_gdt_pointer32:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.pvh_start64_high, "ax"
    .code64
pvh_start64_high:
    /* Reload GDTR through the high mapping before the identity map goes. */
    movabs $boot_gdt_pointer64, %rax
    lgdt (%rax)
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs

    movabs $boot_stack_top, %rsp
    movabs $boot_pml4, %rax
    movq $0, (%rax)                     /* drop the identity mapping */
    mov %cr3, %rax
    mov %rax, %cr3

    mov %esi, %edi                      /* zero-extends: start_info_phys */
    xor %ebp, %ebp                      /* ends frame-pointer walks */
    call kernel_boot_entry
3:  hlt
    jmp 3b

    .section .rodata.boot_gdt_pointer64, "a"
    .balign 8
boot_gdt_pointer64:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt + KERNEL_VIRT

    .section .bss.boot_page_tables, "aw", @nobits
    .balign 4096
    .global boot_pml4, boot_pdpt_low, boot_pdpt_high, boot_pd, boot_pt_image
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4096
boot_pt_image:  .skip 4096 * IMAGE_PAGE_TABLES

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard, boot_stack_bottom, boot_stack_top
boot_stack_guard:
    .skip 4096
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:
    "#,
    kernel_virt = const KERNEL_VIRT,
    kernel_phys = const KERNEL_PHYS,
    stack_size = const BOOT_STACK_SIZE,
    start_info_magic = const START_INFO_MAGIC,
    debug_exit_port = const exit_status::DEBUG_EXIT_PORT,
    not_enough_memory = const exit_status::NOT_ENOUGH_MEMORY,
    min_mib = const MIN_MEMORY >> 20,
    image_page_tables = const IMAGE_PAGE_TABLES,
    kernel_image_max = const KERNEL_IMAGE_MAX,
    min_memory_image_max = const MIN_MEMORY_IMAGE_MAX,
    memmap_entry_size = const MEMMAP_ENTRY_SIZE,
    options(att_syntax)
);

unsafe extern "C" {
    static boot_stack_guard: u8;
    static boot_stack_bottom: u8;
    static boot_pml4: [u64; 512];
    static boot_pdpt_high: [u64; 512];
    static boot_pd: [u64; 512];
    static boot_pt_image: [[u64; 512]; IMAGE_PAGE_TABLES];
}

/// Physical address of a kernel-image symbol.
fn image_phys(virt: *const [u64; 512]) -> u64 {
    virt as u64 - KERNEL_VIRT
}

/// The page tables the stub built that are still in use once the identity
/// mapping is gone: the PML4, the high PDPT, the shared page directory and
/// the image's page tables, last, in the order they map the image (the
/// i-th maps the i-th 2 MiB from [`KERNEL_PHYS`]).
pub fn boot_stub_tables() -> [EarlyPageTable; 3 + IMAGE_PAGE_TABLES] {
    let table = |virt, level| EarlyPageTable {
        phys: image_phys(virt),
        level,
        origin: TableOrigin::BootStub,
    };
    let image_tables = (&raw const boot_pt_image).cast::<[u64; 512]>();
    core::array::from_fn(|i| match i {
        0 => table(&raw const boot_pml4, TableLevel::Pml4),
        1 => table(&raw const boot_pdpt_high, TableLevel::Pdpt),
        2 => table(&raw const boot_pd, TableLevel::Pd),
        _ => table(image_tables.wrapping_add(i - 3), TableLevel::Pt),
    })
}

/// The unmapped page just below the boot stack: a write there is a boot
/// stack overflow.
pub fn boot_stack_guard_page() -> Range<u64> {
    let start = (&raw const boot_stack_guard) as u64;
    start..start + PAGE_SIZE as u64
}

/// Bytes of the boot stack ever used. The stub zeroes the stack, so the
/// lowest non-zero word marks the deepest point reached (a word written as
/// zero can hide a few bytes: the figure is a lower bound).
pub fn boot_stack_high_water() -> usize {
    let bottom = (&raw const boot_stack_bottom).cast::<u64>();
    let words = BOOT_STACK_SIZE / 8;
    let untouched = (0..words)
        // SAFETY: every index is inside the boot stack, a static region of
        // the image mapped for the kernel's whole life. Volatile reads of
        // plain words: the stack may change under us, which only moves the
        // answer, and no reference to the live stack is ever formed.
        .take_while(|&i| unsafe { bottom.add(i).read_volatile() } == 0)
        .count();
    BOOT_STACK_SIZE - untouched * 8
}
