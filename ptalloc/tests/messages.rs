//! What the allocator's errors and freetypes say when printed: the kernel
//! shows these texts in its boot report and failure messages.

use ptalloc::*;

const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};
const USER: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};

#[test]
fn freetypes_print_mobility_and_protection() {
    assert_eq!(Freetype::KERNEL.to_string(), "unmovable/mapped");
    assert_eq!(PT.to_string(), "unmovable/pkey1");
    let secret = Freetype::new(Mobility::Movable, Protection::Unmapped).unwrap();
    assert_eq!(secret.to_string(), "movable/unmapped");
}

#[test]
fn alloc_errors_say_what_failed() {
    let cases = [
        (
            AllocError::InvalidOrder(19),
            "order 19 is above the maximum 18",
        ),
        (
            AllocError::InvalidCpu(4),
            "CPU 4 is beyond the allocator's CPU count",
        ),
        (
            AllocError::ReserveNotForFreetype(USER),
            "the split reserve holds page-table pages, not movable/mapped",
        ),
        (
            AllocError::ReserveNeedsOrderZero(2),
            "the split reserve gives single pages, not order 2",
        ),
        (
            AllocError::WouldBlock,
            "no free page without converting, and NO_BLOCK was given",
        ),
        (
            AllocError::OutOfMemory,
            "out of memory: no free block and no free pageblock to convert",
        ),
        (
            AllocError::ReserveExhausted,
            "the split reserve is empty: refusing to split with an unprotected page table",
        ),
        (
            AllocError::Backend(DirectMapError::NoSplitPage),
            "direct-map backend failed: NoSplitPage",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}

#[test]
fn free_errors_name_the_frame() {
    let cases = [
        (
            FreeError::OutOfRange(Pfn(0x1234)),
            "frame 0x1234 is outside the managed memory",
        ),
        (
            FreeError::InvalidOrder(20),
            "order 20 is above the maximum 18",
        ),
        (
            FreeError::InvalidCpu(9),
            "CPU 9 is beyond the allocator's CPU count",
        ),
        (
            FreeError::NotAllocated(Pfn(0x10)),
            "frame 0x10 is not the start of an allocated block (double free or never allocated)",
        ),
        (
            FreeError::WrongOrder {
                pfn: Pfn(0x20),
                allocated: 3,
                given: 2,
            },
            "frame 0x20 was allocated with order 3, freed with order 2",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}

#[test]
fn init_errors_say_what_is_wrong() {
    let cases = [
        (
            InitError::MisalignedBase(Pfn(0x200)),
            "base frame 0x200 is not aligned to the largest block",
        ),
        (
            InitError::TooManyFrames(1 << 33),
            "8589934592 frames is more than 32-bit indices can name",
        ),
        (
            InitError::BadRange {
                start: Pfn(0x10),
                end: Pfn(0x8),
            },
            "range [0x10, 0x8) is empty or outside the metadata",
        ),
        (
            InitError::Overlap(Pfn(0x30)),
            "frame 0x30 was already given to the allocator",
        ),
        (
            InitError::MixedPageblock(Pfn(0x200)),
            "frame 0x200 shares a pageblock with memory of another freetype",
        ),
        (
            InitError::PageTableFreetype(USER),
            "the page-table freetype must be key-protected, not movable/mapped",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}
