//! The policy lab's kernel side under QEMU: every allocation strategy
//! (`ptstrategy=`) boots, passes the verification walk and runs the three
//! lab workloads with their walks passing, each with its own signature in
//! the figures; `ptfallback=unprotected` is the one policy whose walk
//! fails, exactly while exposed page tables live.

use std::collections::BTreeMap;

use qemu_tests::{Run, boot, qemu};
use tools::Outcome;

/// The lab's boots run thousands of page-table operations (pagewise
/// flushes for every one): seconds on an idle host, minutes on a busy one
/// (CI with other QEMU runs beside it). The timeout only detects a hang.
const LAB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// One workload's figures, from its `lab: workload=NAME key=value ...` line.
type Figures = BTreeMap<String, String>;

fn lab_lines(run: &Run) -> BTreeMap<String, Figures> {
    let mut workloads = BTreeMap::new();
    for line in &run.0.log {
        let Some((_, rest)) = line.split_once("lab: ") else {
            continue;
        };
        let figures: Figures = rest
            .split_whitespace()
            .map(|token| {
                let (key, value) = token
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{token:?} is not key=value in {line:?}"));
                (key.to_string(), value.to_string())
            })
            .collect();
        workloads.insert(figures["workload"].clone(), figures);
    }
    workloads
}

fn number(figures: &Figures, key: &str) -> u64 {
    figures
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {figures:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {figures:?}: {e}"))
}

fn run_lab(words: &str) -> (Run, BTreeMap<String, Figures>) {
    let run = boot(qemu(&format!("lab=churn,spaces,storm {words}")).timeout(LAB_TIMEOUT));
    run.expect_outcome(Outcome::Success);
    let lines = lab_lines(&run);
    let names: Vec<&str> = lines.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["churn", "spaces", "storm"],
        "{}",
        run.0.transcript()
    );
    (run, lines)
}

/// Every strategy's walks pass and nothing is exposed; what differs is
/// how the page tables were protected.
fn strategy_passes(strategy: &str) -> BTreeMap<String, Figures> {
    let (run, lines) = run_lab(&format!("ptstrategy={strategy}"));
    run.expect_console(&[&format!(
        "page-table policy: ptstrategy={strategy} ptfallback=fail"
    )]);
    for (name, figures) in &lines {
        assert_eq!(figures["strategy"], strategy);
        assert_eq!(number(figures, "walk_violations"), 0, "{name}: {figures:?}");
        assert!(number(figures, "walk_tables") > 0, "{name}: {figures:?}");
        assert_eq!(number(figures, "exposed_tables"), 0, "{name}");
        assert!(
            number(figures, "pt_allocs") >= number(figures, "ops"),
            "{name}"
        );
    }
    lines
}

#[test]
fn freetype_converts_whole_pageblocks() {
    let lines = strategy_passes("freetype");
    let churn = &lines["churn"];
    assert_eq!(number(churn, "page_protects"), 0);
    assert!(number(churn, "conversions") > 0);
    // The design's goal: at most 2 flushes per 1,000 page tables.
    assert!(number(churn, "flushes") * 1000 <= 2 * number(churn, "pt_allocs"));
}

#[test]
fn pagewise_protects_every_table_alone() {
    let lines = strategy_passes("pagewise");
    for (name, figures) in &lines {
        assert_eq!(number(figures, "conversions"), 0, "{name}");
        // Every table protected by itself, and unprotected when freed.
        assert_eq!(
            number(figures, "page_protects"),
            number(figures, "pt_allocs"),
            "{name}"
        );
        assert_eq!(
            number(figures, "page_unprotects"),
            number(figures, "page_protects"),
            "{name}"
        );
    }
    // A flush per protect and per unprotect, and a shattered direct map.
    let churn = &lines["churn"];
    assert!(number(churn, "flushes") >= 2 * number(churn, "pt_allocs"));
    assert!(number(churn, "splits_2m") > 0);
    assert!(number(churn, "dm_4k") > 512 * number(churn, "splits_2m"));
}

#[test]
fn protected_first_unprotects_pageblocks_on_demand() {
    let (run, lines) = run_lab("ptstrategy=protected-first");
    // At boot, every whole pageblock is page-table memory; ordinary
    // allocations since then have converted some back.
    let counters = run.line_starting("allocator counters: ");
    let conversions: u64 = counters["allocator counters: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{counters}"));
    assert!(conversions > 1, "{counters}");
    for figures in lines.values() {
        assert_eq!(number(figures, "walk_violations"), 0, "{figures:?}");
    }
    // Without pressure no table is protected alone (the storm's are, by
    // the single-page fallback, as under `freetype`).
    for name in ["churn", "spaces"] {
        assert_eq!(number(&lines[name], "page_protects"), 0, "{name}");
    }
}

#[test]
fn granular_never_splits_a_gigabyte() {
    // 2 GiB: the direct map has whole gigabytes to map with 1 GiB pages.
    let boot_with = |strategy: &str| {
        let mut config = qemu(&format!("ptstrategy={strategy} lab=spaces")).timeout(LAB_TIMEOUT);
        config.memory = "2G".into();
        let run = boot(config);
        run.expect_outcome(Outcome::Success);
        let spaces = lab_lines(&run).remove("spaces").expect("a spaces line");
        (run.line_starting("allocator counters: "), spaces)
    };
    let (freetype, _) = boot_with("freetype");
    assert!(!freetype.contains("splits 1G->2M 0 "), "{freetype}");
    let (granular, spaces) = boot_with("granular");
    assert!(granular.contains("splits 1G->2M 0 "), "{granular}");
    assert_eq!(number(&spaces, "dm_1g"), 0);
    assert_eq!(number(&spaces, "walk_violations"), 0);
}

#[test]
fn the_dodge_fails_the_walk_exactly_while_exposed_tables_live() {
    let (_, lines) = run_lab("ptfallback=unprotected");
    let storm = &lines["storm"];
    assert_eq!(storm["fallback"], "unprotected");
    let exposed_live = number(storm, "exposed_live");
    assert!(number(storm, "exposed_tables") >= exposed_live);
    assert!(exposed_live > 0, "{storm:?}");
    // Each exposed table linked into the storm's space is one violation.
    assert_eq!(number(storm, "walk_violations"), exposed_live);
    assert_eq!(number(storm, "page_protects"), 0);
    // Without pressure nothing is exposed, and the walk passes.
    for name in ["churn", "spaces"] {
        assert_eq!(number(&lines[name], "exposed_tables"), 0, "{name}");
        assert_eq!(number(&lines[name], "walk_violations"), 0, "{name}");
    }
    // The same storm under the default fallback exposes nothing: see
    // `freetype_converts_whole_pageblocks`, whose walks all pass.
}

/// `lab=trace` replays the boot module as a trace: a good one gives its
/// figures, a bad one is refused whole, before anything is allocated,
/// with the line that is wrong.
#[test]
fn a_trace_replays_in_the_kernel_and_a_bad_one_is_refused_with_its_line() {
    let dir = std::env::temp_dir().join(format!("pks-lab-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("a temporary trace");
        path
    };
    let good = write(
        "good.trace",
        "# a long comment that goes on and on and on and on and on and on and on and on and on and on and on and on and on\nA 1 4\nA 2 1 # a PT\nD 3 2\nF 2\n",
    );
    let run = boot(qemu("lab=trace").initrd(good).timeout(LAB_TIMEOUT));
    run.expect_outcome(Outcome::Success);
    let trace = &lab_lines(&run)["trace"];
    assert_eq!(number(trace, "ops"), 4);
    assert_eq!(number(trace, "pt_allocs"), 2);
    assert_eq!(number(trace, "pt_failures"), 0);
    for (text, said) in [
        ("A 1 4\nF 2\n", "line 2: frees an id that is not live"),
        ("A 1 4\nA 1 1\n", "line 2: the id is live already"),
        (
            "A 1 5\n",
            "line 1: a level outside 1..=4 or an order above 18",
        ),
        ("\nX 1\n", "line 2: not an event"),
        ("A 1\n", "line 1: not an event"),
        ("F 1 2\n", "line 1: not an event"),
    ] {
        let bad = write("bad.trace", text);
        boot(qemu("lab=trace").initrd(bad))
            .expect_outcome(Outcome::KernelFailure)
            .expect_console(&[&format!("lab: trace failed: {said}")]);
    }
    boot(qemu("lab=trace"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&["lab: trace failed: no boot module: give the trace with -initrd"]);
    let _ = std::fs::remove_dir_all(&dir);
}
