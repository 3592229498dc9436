//! The kernel's pageblock-map dump (`memmap=`) under QEMU, read back with
//! the host's parser (`tools::memmap`): one dump per point asked for,
//! covering every pageblock of the machine, with the page-table memory,
//! the kernel image and the free memory where they are.

use qemu_tests::{boot, qemu};
use tools::Outcome;
use tools::memmap::{MapPage, parse_transcript};

#[test]
fn the_pageblock_map_after_boot_and_at_the_churn_peak() {
    let run = boot(qemu("memmap=boot,churn test=page_table_churn"));
    run.expect_outcome(Outcome::Success);
    let log = run.0.log.join("\n");
    let dumps = parse_transcript(&log).unwrap_or_else(|e| panic!("{e}\n{}", run.0.transcript()));
    let labels: Vec<&str> = dumps.iter().map(|d| d.label.as_str()).collect();
    assert_eq!(labels, ["after-boot", "churn-peak"]);
    let page_tables = |d: &tools::memmap::Dump| {
        d.blocks
            .iter()
            .filter(|b| {
                b.freetype
                    .is_some_and(|f| f.protection == ptalloc::Protection::Pkey(1))
            })
            .count()
    };
    let (boot_map, peak) = (&dumps[0], &dumps[1]);
    // 128 MiB: 64 pageblocks from frame 0.
    assert_eq!((boot_map.first, boot_map.blocks.len()), (0, 64));
    // The image's pageblock (2 MiB) is the kernel's, split to 4 KiB for
    // its read-only alias.
    assert_eq!(boot_map.blocks[1].freetype, None);
    assert_eq!(boot_map.blocks[1].page, MapPage::Split);
    // Every other pageblock is the allocator's, free ones included (a free
    // block larger than a pageblock names each pageblock's freetype).
    let managed = boot_map
        .blocks
        .iter()
        .filter(|b| b.freetype.is_some())
        .count();
    assert_eq!(managed, 63, "{boot_map:?}");
    // Page tables have a pageblock at boot, and more at the churn's peak
    // (about 10,000 tables: some twenty pageblocks), each well filled.
    assert!(page_tables(boot_map) >= 1, "{boot_map:?}");
    assert!(
        page_tables(peak) >= 19,
        "{} page-table pageblocks at the peak",
        page_tables(peak)
    );
    let full = peak
        .blocks
        .iter()
        .filter(|b| {
            b.freetype
                .is_some_and(|f| f.protection == ptalloc::Protection::Pkey(1))
        })
        .filter(|b| b.fill >= 60)
        .count();
    assert!(
        full >= 15,
        "{full} page-table pageblocks nearly full at the peak"
    );
}

#[test]
fn a_bad_memmap_point_is_refused() {
    boot(qemu("memmap=peak"))
        .expect_outcome(Outcome::BadCommandLine)
        .expect_console(&["memmap"]);
}
