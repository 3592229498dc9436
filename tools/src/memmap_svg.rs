//! Memory pictures, drawn: a [`Dump`] as an SVG grid.
//!
//! One cell per 2 MiB pageblock, [`COLUMNS`] to a row in address order:
//! - the colour is the freetype's, from a fixed palette built on the
//!   Okabe-Ito colours (safe for the common colour-vision deficiencies):
//!   the page-table key in the orange family, `Mapped` memory in blues,
//!   `Unmapped` in purples, other keys in greens, movable a lighter shade
//!   of unmovable; not managed is plain grey;
//! - the fill is a bar rising from the cell's foot over a pale ground;
//! - the direct-map page is a mark: none for a 1 GiB page, a corner
//!   notch for a 2 MiB page, a black hatch when split into 4 KiB pages,
//!   a dashed outline when absent;
//! - every cell has a tooltip (`<title>`) with its number, frame, freetype,
//!   fill and page.
//!
//! A legend lists the freetypes present (with counts) and the marks; the
//! title gives the label and the counts.
//!
//! Written by hand rather than with `plotters`: the grid needs SVG
//! patterns (the hatch), per-cell tooltips and exact cell geometry, none
//! of which plotters' drawing API offers, and a grid has no axes or
//! scales for it to help with. The output is deterministic (the same dump
//! gives the same bytes), so tests can count its elements.

use std::fmt::Write as _;

use ptalloc::{Freetype, Mobility, NR_FREETYPES, PAGEBLOCK_ORDER, Protection};

use crate::memmap::{Dump, FILL_MAX, MapPage, Pageblock};

/// Cells in a row.
pub const COLUMNS: usize = 64;
const CELL: usize = 12;
const PITCH: usize = CELL + 2;
const MARGIN: usize = 16;
const TITLE_HEIGHT: usize = 48;
const LEGEND_ROW: usize = 18;
const LEGEND_COLUMN: usize = 300;
const GRID_WIDTH: usize = COLUMNS * PITCH;
const WIDTH: usize = GRID_WIDTH + 2 * MARGIN;
/// Grey for pageblocks not managed.
const UNMANAGED_COLOUR: &str = "#bbbbbb";
/// The key page tables use, as the kernel configures it.
const PAGE_TABLE_KEY: u8 = pkeys::PAGE_TABLE_KEY.index();

/// The colour of a freetype: (unmovable, movable) shades per family.
pub fn colour(freetype: Freetype) -> &'static str {
    let (unmovable, movable) = match freetype.protection {
        Protection::Pkey(k) if k == PAGE_TABLE_KEY => ("#d55e00", "#e69f00"),
        Protection::Mapped => ("#0072b2", "#56b4e9"),
        Protection::Unmapped => ("#882255", "#cc79a7"),
        Protection::Pkey(_) => ("#117733", "#44aa99"),
    };
    match freetype.mobility {
        Mobility::Unmovable => unmovable,
        Mobility::Movable => movable,
    }
}

/// What the legend calls a freetype.
fn name(freetype: Freetype) -> String {
    match freetype.protection {
        Protection::Pkey(k) if k == PAGE_TABLE_KEY => format!("{freetype} (page tables)"),
        _ => freetype.to_string(),
    }
}

/// Escapes text for SVG character data and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The picture of `dump`, as a standalone SVG document.
pub fn render(dump: &Dump) -> String {
    let summary = dump.summary();
    let rows = dump.blocks.len().div_ceil(COLUMNS).max(1);
    let grid_top = MARGIN + TITLE_HEIGHT;
    let legend_top = grid_top + rows * PITCH + MARGIN;
    let present: Vec<Freetype> = Freetype::all()
        .filter(|f| summary.by_freetype[f.index()] > 0)
        .collect();
    // Freetypes, "not managed", then the fill and the four marks.
    let legend_items = present.len() + 1 + 5;
    let per_row = (GRID_WIDTH / LEGEND_COLUMN).max(1);
    let legend_height = legend_items.div_ceil(per_row) * LEGEND_ROW;
    let height = legend_top + legend_height + MARGIN;

    let mut svg = String::new();
    // Writing to a String cannot fail: results are ignored throughout.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    svg.push_str(concat!(
        "<defs><pattern id=\"hatch\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\" ",
        "patternTransform=\"rotate(45)\"><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"4\" ",
        "stroke=\"#000\" stroke-width=\"1.2\"/></pattern></defs>\n"
    ));
    let _ = writeln!(
        svg,
        r##"<rect width="{WIDTH}" height="{height}" fill="#fff"/>"##
    );

    // Title and counts.
    let mib = dump.blocks.len() << (PAGEBLOCK_ORDER + 12 - 20);
    let _ = writeln!(
        svg,
        r#"<text id="title" x="{MARGIN}" y="{}" font-size="16" font-weight="bold">memmap {}: {} pageblocks ({mib} MiB) from frame {:#x}</text>"#,
        MARGIN + 14,
        escape(&dump.label),
        dump.blocks.len(),
        dump.first
    );
    let page_tables: u64 = present
        .iter()
        .filter(|f| matches!(f.protection, Protection::Pkey(k) if k == PAGE_TABLE_KEY))
        .map(|f| summary.by_freetype[f.index()])
        .sum();
    let _ = writeln!(
        svg,
        r#"<text id="counts" x="{MARGIN}" y="{}">{} managed ({page_tables} page-table), {} not managed; direct map: {} in 1 GiB pages, {} 2 MiB pages, {} split to 4 KiB, {} absent; mean fill {:.1}%</text>"#,
        MARGIN + 34,
        summary.managed(),
        summary.unmanaged,
        summary.by_page[MapPage::Giga as usize],
        summary.by_page[MapPage::Mega as usize],
        summary.by_page[MapPage::Split as usize],
        summary.by_page[MapPage::Absent as usize],
        summary.mean_fill_percent()
    );

    svg.push_str("<g id=\"grid\">\n");
    for (i, block) in dump.blocks.iter().enumerate() {
        let x = MARGIN + (i % COLUMNS) * PITCH;
        let y = grid_top + (i / COLUMNS) * PITCH;
        cell(&mut svg, dump, i, *block, x, y);
    }
    svg.push_str("</g>\n");

    legend(
        &mut svg,
        &present,
        &summary.by_freetype,
        summary.unmanaged,
        legend_top,
        per_row,
    );
    svg.push_str("</svg>\n");
    svg
}

fn cell(svg: &mut String, dump: &Dump, i: usize, block: Pageblock, x: usize, y: usize) {
    let pfn = dump.first + ((i as u64) << PAGEBLOCK_ORDER);
    let what = match block.freetype {
        Some(freetype) => format!("{freetype}, fill {}/{FILL_MAX}", block.fill),
        None => "not managed".to_string(),
    };
    let _ = write!(
        svg,
        "<g><title>pageblock {i} (frame {pfn:#x}): {what}, {}</title>",
        block.page.describe()
    );
    match block.freetype {
        Some(freetype) => {
            let colour = colour(freetype);
            let _ = write!(
                svg,
                r#"<rect class="cell" x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{colour}" fill-opacity="0.25"/>"#
            );
            let bar = (usize::from(block.fill) * CELL).div_ceil(usize::from(FILL_MAX));
            if bar > 0 {
                let _ = write!(
                    svg,
                    r#"<rect class="fill" x="{x}" y="{}" width="{CELL}" height="{bar}" fill="{colour}"/>"#,
                    y + CELL - bar
                );
            }
        }
        None => {
            let _ = write!(
                svg,
                r#"<rect class="cell" x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{UNMANAGED_COLOUR}"/>"#
            );
        }
    }
    mark(svg, block.page, x, y);
    svg.push_str("</g>\n");
}

/// The direct-map mark of a cell at (x, y).
fn mark(svg: &mut String, page: MapPage, x: usize, y: usize) {
    match page {
        MapPage::Giga => {}
        MapPage::Mega => {
            let _ = write!(
                svg,
                r##"<path class="mega" d="M{} {y}h5v5z" fill="#000"/>"##,
                x + CELL - 5
            );
        }
        MapPage::Split => {
            let _ = write!(
                svg,
                r#"<rect class="split" x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="url(#hatch)"/>"#
            );
        }
        MapPage::Absent => {
            let _ = write!(
                svg,
                r##"<rect class="absent" x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#000" stroke-dasharray="2 1.5"/>"##,
                x as f64 + 0.5,
                y as f64 + 0.5,
                CELL - 1,
                CELL - 1
            );
        }
    }
}

fn legend(
    svg: &mut String,
    present: &[Freetype],
    counts: &[u64],
    unmanaged: u64,
    top: usize,
    per_row: usize,
) {
    debug_assert_eq!(counts.len(), NR_FREETYPES);
    svg.push_str("<g id=\"legend\">\n");
    let mut item = 0;
    let mut place = |svg: &mut String, swatch: &str, text: String| {
        let x = MARGIN + (item % per_row) * LEGEND_COLUMN;
        let y = top + (item / per_row) * LEGEND_ROW;
        let _ = writeln!(
            svg,
            "<g class=\"legend-item\"><g>{}</g><text x=\"{}\" y=\"{}\">{}</text></g>",
            swatch
                .replace("{x}", &x.to_string())
                .replace("{y}", &y.to_string()),
            x + CELL + 6,
            y + CELL - 2,
            escape(&text)
        );
        item += 1;
    };
    for &freetype in present {
        let swatch = format!(
            r#"<rect x="{{x}}" y="{{y}}" width="{CELL}" height="{CELL}" fill="{}"/>"#,
            colour(freetype)
        );
        place(
            svg,
            &swatch,
            format!("{}: {}", name(freetype), counts[freetype.index()]),
        );
    }
    let grey = format!(
        r#"<rect x="{{x}}" y="{{y}}" width="{CELL}" height="{CELL}" fill="{UNMANAGED_COLOUR}"/>"#
    );
    place(svg, &grey, format!("not managed: {unmanaged}"));
    // The marks, drawn on a neutral cell at the item's place.
    let samples = [
        (None, "fill: bar height = pages allocated"),
        (
            Some(MapPage::Giga),
            "direct map: inside a 1 GiB page (no mark)",
        ),
        (Some(MapPage::Mega), "direct map: a 2 MiB page (corner)"),
        (
            Some(MapPage::Split),
            "direct map: split into 4 KiB pages (hatch)",
        ),
        (Some(MapPage::Absent), "direct map: absent (dashed)"),
    ];
    for (page, text) in samples {
        let mut swatch = String::new();
        let _ = write!(
            swatch,
            r##"<rect x="{{x}}" y="{{y}}" width="{CELL}" height="{CELL}" fill="#999" fill-opacity="0.25"/>"##
        );
        match page {
            None => {
                let half = CELL / 2;
                let _ = write!(
                    swatch,
                    r##"<g transform="translate({{x}} {{y}})"><rect y="{half}" width="{CELL}" height="{half}" fill="#999"/></g>"##
                );
            }
            Some(page) => {
                let mut m = String::new();
                // Drawn at the origin, then moved to the item's place.
                mark(&mut m, page, 0, 0);
                let _ = write!(swatch, r#"<g transform="translate({{x}} {{y}})">{m}</g>"#);
            }
        }
        place(svg, &swatch, text.to_string());
    }
    svg.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::{Pageblock, fill_for, parse_transcript, write_dump};

    const PT: Freetype = Freetype {
        mobility: Mobility::Unmovable,
        protection: Protection::Pkey(PAGE_TABLE_KEY),
    };

    fn dump() -> Dump {
        let mut blocks = vec![Pageblock::unmanaged(MapPage::Mega); 2];
        blocks.extend((0..62).map(|i| Pageblock {
            freetype: Some(Freetype::KERNEL),
            fill: fill_for(i * 8),
            page: MapPage::Mega,
        }));
        blocks.push(Pageblock {
            freetype: Some(PT),
            fill: 20,
            page: MapPage::Split,
        });
        blocks.push(Pageblock {
            freetype: Freetype::new(Mobility::Movable, Protection::Unmapped),
            fill: 0,
            page: MapPage::Absent,
        });
        Dump {
            label: "after-boot".into(),
            first: 0,
            blocks,
        }
    }

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn one_cell_per_pageblock_with_marks_and_a_legend() {
        let dump = dump();
        // Through the text format first: the picture of what the kernel sent.
        let parsed = parse_transcript(&write_dump(&dump)).unwrap_or_default();
        assert_eq!(parsed, vec![dump.clone()]);
        let svg = render(&parsed[0]);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        assert_eq!(count(&svg, "class=\"cell\""), 66);
        assert_eq!(count(&svg, "<title>"), 66);
        // Every managed block with any use has a bar: 61 kernel blocks
        // (one is empty) and the page-table one.
        assert_eq!(count(&svg, "class=\"fill\""), 62);
        // Marks in the grid, plus one of each kind in the legend.
        assert_eq!(count(&svg, "class=\"split\""), 1 + 1);
        assert_eq!(count(&svg, "class=\"absent\""), 1 + 1);
        assert_eq!(count(&svg, "class=\"mega\""), 64 + 1);
        assert_eq!(count(&svg, "id=\"legend\""), 1);
        // Three freetypes present, not managed, fill and four marks.
        assert_eq!(count(&svg, "class=\"legend-item\""), 3 + 1 + 5);
        assert!(svg.contains("unmovable/pkey1 (page tables): 1"));
        assert!(svg.contains("unmovable/mapped: 62"));
        assert!(svg.contains("not managed: 2"));
        assert!(svg.contains("memmap after-boot: 66 pageblocks (132 MiB) from frame 0x0"));
        assert!(svg.contains("64 managed (1 page-table), 2 not managed"));
        assert!(svg.contains("1 split to 4 KiB, 1 absent"));
        assert!(svg.contains(&format!("fill=\"{}\"", colour(PT))));
        // Balanced groups: a cheap well-formedness check.
        assert_eq!(count(&svg, "<g"), count(&svg, "</g>"));
        assert_eq!(render(&parsed[0]), svg, "deterministic");
    }

    #[test]
    fn palette_families_are_distinct() {
        let colours: std::collections::HashSet<&str> = [
            colour(PT),
            colour(Freetype::KERNEL),
            colour(Freetype {
                mobility: Mobility::Unmovable,
                protection: Protection::Unmapped,
            }),
            colour(Freetype {
                mobility: Mobility::Unmovable,
                protection: Protection::Pkey(2),
            }),
            UNMANAGED_COLOUR,
        ]
        .into_iter()
        .collect();
        assert_eq!(colours.len(), 5);
        for freetype in Freetype::all() {
            assert_ne!(
                colour(freetype),
                colour(Freetype {
                    mobility: match freetype.mobility {
                        Mobility::Movable => Mobility::Unmovable,
                        Mobility::Unmovable => Mobility::Movable,
                    },
                    ..freetype
                })
            );
        }
    }
}
