//! The kernel's `lab:` log lines, read by one parser for every in-kernel
//! workload (`kernel/src/lab.rs` prints them on COM2, decoded by the
//! runner as `[INFO ] lab: ...`).
//!
//! A line is `lab: ` and then space-separated `key=value` tokens, one of
//! them `workload=NAME`. The values of [`STRING_KEYS`] are words; every
//! other value is a decimal integer. A workload's figures may come on more
//! than one line (the walk's on a line of its own): its lines are merged,
//! and a key may appear once among them. Keys the lab does not know are
//! kept (a newer kernel may say more); a key that is absent was not
//! measured, and stays absent rather than becoming 0.
//!
//! What this module promises: [`parse_lab_line`] is a pure function of
//! the decoded log, and every way a log can be wrong (no line for the
//! workload, a token without `=`, an empty key or value, a value that is
//! not a decimal integer, a key given twice) is an `Err` naming the token
//! and the line, never a panic.

use super::Metrics;

/// Keys whose values are words, not numbers.
pub const STRING_KEYS: [&str; 4] = ["workload", "strategy", "fallback", "protection"];

/// One workload's figures, as the kernel printed them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabLine {
    /// `workload=`.
    pub workload: String,
    /// `strategy=` (`ptstrategy=`'s value), if printed.
    pub strategy: Option<String>,
    /// `fallback=` (`ptfallback=`'s value), if printed.
    pub fallback: Option<String>,
    /// `protection=` (`ptprot=`'s resolved value), if printed.
    pub protection: Option<String>,
    /// Every numeric key, and the derived `flushes_per_1000` and
    /// `pkrs_writes_per_map` where their inputs are there.
    pub metrics: Metrics,
}

/// The text after `lab: ` of a decoded log line (`[LEVEL] message`, or
/// a bare message), if its message starts so.
fn lab_message(line: &str) -> Option<&str> {
    let message = match line.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map(|(_, m)| m)?,
        None => line,
    };
    message.trim_start().strip_prefix("lab: ")
}

/// `workload`'s figures from the decoded `log`.
pub fn parse_lab_line(log: &[String], workload: &str) -> Result<LabLine, String> {
    let wanted = format!("workload={workload}");
    let mut found = LabLine {
        workload: workload.to_string(),
        ..LabLine::default()
    };
    let mut lines = 0;
    for line in log {
        let Some(message) = lab_message(line) else {
            continue;
        };
        // Another workload's line, or another message of the lab's.
        if !message.split_whitespace().any(|token| token == wanted) {
            continue;
        }
        lines += 1;
        for token in message.split_whitespace() {
            let bad = |why: &str| format!("lab line {line:?}: token {token:?}: {why}");
            let (key, value) = token
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            if key.is_empty() || value.is_empty() {
                return Err(bad("empty key or value"));
            }
            let slot = match key {
                // The line's own: each of its lines names it.
                "workload" if value == workload => continue,
                "workload" => return Err(bad("a second workload on one line")),
                "strategy" => Some(&mut found.strategy),
                "fallback" => Some(&mut found.fallback),
                "protection" => Some(&mut found.protection),
                _ => None,
            };
            let duplicate = || bad("the key is given twice for this workload");
            match slot {
                Some(slot) => {
                    if slot.is_some() {
                        return Err(duplicate());
                    }
                    *slot = Some(value.to_string());
                }
                None => {
                    let number = value
                        .parse::<u64>()
                        .ok()
                        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| bad("expected a decimal integer"))?;
                    if found
                        .metrics
                        .insert(key.to_string(), number as f64)
                        .is_some()
                    {
                        return Err(duplicate());
                    }
                }
            }
        }
    }
    if lines == 0 {
        return Err(format!(
            "no `lab: workload={workload} ...` line in the log (did the kernel run the workload?)"
        ));
    }
    add_derived(&mut found.metrics);
    Ok(found)
}

/// The figures computed from others: flushes per 1,000 page-table
/// allocations and PKRS writes per map, where their inputs are there.
pub fn add_derived(metrics: &mut Metrics) {
    let get = |key: &str| metrics.get(key).copied();
    let per_1000 = match (get("flushes"), get("pt_allocs")) {
        (Some(flushes), Some(tables)) if tables > 0.0 => Some(flushes * 1000.0 / tables),
        _ => None,
    };
    let per_map = match (get("pkrs_writes"), get("maps")) {
        (Some(writes), Some(maps)) if maps > 0.0 => Some(writes / maps),
        _ => None,
    };
    if let Some(v) = per_1000 {
        metrics.insert("flushes_per_1000".into(), v);
    }
    if let Some(v) = per_map {
        metrics.insert("pkrs_writes_per_map".into(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    const CHURN: &str = "[INFO ] lab: workload=churn strategy=freetype fallback=fail protection=pks ops=10000 maps=10000 pt_allocs=10021 pt_failures=0 failed_allocs=0 flushes=19 flushes_remote=0 splits_1g=0 splits_2m=0 page_protects=0 page_unprotects=0 conversions=20 reserve_taken=0 exposed_tables=0 exposure_allocs=0 pkrs_writes=20000 dm_1g=0 dm_2m=64 dm_4k=0 stranded=12 reserve_level=8 reserve_low_water=7 exposed_live=0";

    #[test]
    fn a_lab_line_gives_every_figure_and_the_derived_ones() {
        let lines = log(&[
            "[INFO ] boot: 127 MiB usable",
            CHURN,
            "[INFO ] lab: workload=churn walk_tables=10032 walk_violations=0",
        ]);
        let line = parse_lab_line(&lines, "churn").unwrap_or_default();
        assert_eq!(line.workload, "churn");
        assert_eq!(line.strategy.as_deref(), Some("freetype"));
        assert_eq!(line.fallback.as_deref(), Some("fail"));
        assert_eq!(line.protection.as_deref(), Some("pks"));
        let get = |k: &str| line.metrics.get(k).copied();
        assert_eq!(get("pt_allocs"), Some(10021.0));
        assert_eq!(get("flushes"), Some(19.0));
        assert_eq!(get("dm_2m"), Some(64.0));
        assert_eq!(get("walk_tables"), Some(10032.0));
        assert_eq!(get("walk_violations"), Some(0.0));
        assert_eq!(get("pkrs_writes_per_map"), Some(2.0));
        let per_1000 = get("flushes_per_1000").unwrap_or_default();
        assert!((per_1000 - 1.896).abs() < 0.001, "{per_1000}");
        // 23 numbers on the first line, 2 on the walk's, 2 derived.
        assert_eq!(line.metrics.len(), 23 + 2 + 2);
    }

    #[test]
    fn absent_keys_stay_absent_and_other_workloads_are_ignored() {
        let lines = log(&[
            "[INFO ] lab: workload=storm strategy=pagewise pt_allocs=4096 flushes=4096",
            "[INFO ] lab: workload=spaces ops=256 maps=0 pkrs_writes=0",
            "lab: workload=churn pt_allocs=0 flushes=0 future_key=3",
        ]);
        let storm = parse_lab_line(&lines, "storm").unwrap_or_default();
        assert_eq!(storm.metrics.get("flushes_per_1000"), Some(&1000.0));
        assert_eq!(storm.metrics.get("walk_violations"), None);
        assert_eq!(storm.fallback, None);
        // No maps, no PKRS writes per map; no tables, no flushes per 1,000.
        let spaces = parse_lab_line(&lines, "spaces").unwrap_or_default();
        assert_eq!(spaces.metrics.get("pkrs_writes_per_map"), None);
        let churn = parse_lab_line(&lines, "churn").unwrap_or_default();
        assert_eq!(churn.metrics.get("flushes_per_1000"), None);
        assert_eq!(churn.metrics.get("future_key"), Some(&3.0));
    }

    #[test]
    fn a_missing_line_is_a_clear_error() {
        let lines = log(&[
            "[INFO ] boot: 127 MiB usable",
            "[INFO ] churn: 10021 page-table pages allocated and freed",
            "[INFO ] lab: workload=churnier pt_allocs=1",
            "[INFO ] not a lab: workload=churn line",
        ]);
        let e = parse_lab_line(&lines, "churn").err().unwrap_or_default();
        assert!(
            e.contains("no `lab: workload=churn ...` line in the log"),
            "{e}"
        );
        assert!(parse_lab_line(&[], "storm").is_err());
    }

    #[test]
    fn malformed_tokens_are_clear_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "lab: workload=churn protection=PKRS (PKS key write-disable)",
                "token \"(PKS\": expected key=value",
            ),
            (
                "lab: workload=churn flushes=12x",
                "token \"flushes=12x\": expected a decimal integer",
            ),
            (
                "lab: workload=churn flushes=-1",
                "expected a decimal integer",
            ),
            (
                "lab: workload=churn flushes=+1",
                "expected a decimal integer",
            ),
            (
                "lab: workload=churn flushes=1.5",
                "expected a decimal integer",
            ),
            (
                "lab: workload=churn flushes=99999999999999999999",
                "expected a decimal integer",
            ),
            ("lab: workload=churn =3", "empty key or value"),
            ("lab: workload=churn flushes=", "empty key or value"),
            ("lab: workload=churn flushes=1 flushes=2", "given twice"),
        ];
        for (line, says) in cases {
            let e = parse_lab_line(&log(&[line]), "churn")
                .err()
                .unwrap_or_default();
            assert!(e.contains(says), "{line:?}: {e}");
            assert!(e.contains(line), "the error quotes the line: {e}");
        }
        // Twice across lines, too.
        let e = parse_lab_line(
            &log(&[
                "lab: workload=churn strategy=freetype",
                "lab: workload=churn strategy=pagewise",
            ]),
            "churn",
        )
        .err()
        .unwrap_or_default();
        assert!(e.contains("given twice"), "{e}");
    }
}
