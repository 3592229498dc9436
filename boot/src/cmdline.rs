//! The kernel command line (QEMU `-append`) parsed into a [`KernelConfig`].
//!
//! Syntax: words separated by spaces, each `key=value`. Every key is listed
//! in [`OPTIONS`]; an unknown key, a value outside the accepted set, a word
//! without `=`, or a key given twice is a [`CmdlineError`] that names the
//! option and what it accepts. Nothing is silently ignored.

use core::fmt;
use heapless::{String, Vec};
use pkeys::{FaultPolicy, ProtectionPolicy};

/// Longest in-kernel test name accepted by `test=`.
pub const MAX_TEST_NAME: usize = 64;
/// Most test names one `test=` can list.
pub const MAX_SELECTED_TESTS: usize = 16;

// The `test` entry of OPTIONS spells these out.
const _: () = assert!(MAX_SELECTED_TESTS == 16 && MAX_TEST_NAME == 64);

/// Every option, with the values it accepts, as shown in error messages.
pub const OPTIONS: &[(&str, &str)] = &[
    ("ptprot", ProtectionPolicy::ACCEPTED),
    ("pkfault", FaultPolicy::ACCEPTED),
    (
        "test",
        "all, or NAME[,NAME...] of in-kernel tests (at most 16 names of [a-z0-9_], 64 bytes each)",
    ),
    ("demo", "none, pte"),
    ("inject", "none, empty-reserve"),
    ("flushlimit", "auto, or 0-512 pageblocks"),
    ("roottask", "run, suite"),
    ("memmap", "none, or POINT[,POINT...] of boot, churn, lab"),
    (
        "ptstrategy",
        "freetype, pagewise, granular, protected-first",
    ),
    ("ptfallback", "fail, unprotected"),
    (
        "lab",
        "none, or WORKLOAD[,WORKLOAD...] of churn, spaces, storm, trace",
    ),
    (
        "protect",
        "pt[,CLASS...] with CLASS of meta, cnode, tcb; cnode and tcb need meta and ptprot=pks (page tables always; ptprot=none protects nothing)",
    ),
];

/// Most pageblocks `flushlimit=` accepts: one 1 GiB page's worth, beyond
/// which INVLPG one by one is never the cheaper flush.
pub const MAX_FLUSH_LIMIT: u16 = 512;

/// Up to how many pageblocks a direct-map flush invalidates them one by
/// one (INVLPG) rather than reloading CR3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlushLimit {
    /// Measured at boot on the machine it runs on (the default).
    #[default]
    Measured,
    /// This many pageblocks (`flushlimit=N`), for experiments.
    Fixed(u16),
}

/// A demonstration to run after the boot report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Demo {
    /// None (the default).
    #[default]
    None,
    /// A simulated kernel bug writes a live page-table entry
    /// (write-what-where); the protection policy decides what happens.
    Pte,
}

/// When the kernel dumps its pageblock map to the log (`memmap=`), for
/// the host to draw (`make memmap`, the lab).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemmapPoints {
    /// After the boot report (label `after-boot`).
    pub boot: bool,
    /// At the peak of the page-table churn test (label `churn-peak`).
    pub churn: bool,
    /// After each lab workload (label `after-<workload>`).
    pub lab: bool,
}

/// How the page allocator finds protected memory for page tables
/// (`ptstrategy=`): the policy lab's strategies, `ptalloc::Strategy` in
/// the kernel (its doc says what each one does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PtStrategy {
    /// Whole-pageblock conversion with a split reserve (the default).
    #[default]
    Freetype,
    /// Each page table protected by itself, splitting the direct map.
    Pagewise,
    /// A direct map of 2 MiB pages from boot, so no 1 GiB split ever.
    Granular,
    /// Memory starts protected; pageblocks are unprotected on demand.
    ProtectedFirst,
}

/// What a page-table allocation does when no protected page can be had
/// (`ptfallback=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PtFallback {
    /// Fail: a page table is never unprotected (the default).
    #[default]
    Fail,
    /// Hand out an ordinary, unprotected page as the page table (the
    /// verification walk fails while one lives).
    Unprotected,
}

/// Which kernel objects carry a protection key of their own (`protect=`),
/// besides page tables, which always do. Each class is write-disabled
/// outside its own windows; one left out keeps the default key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectProtection {
    /// The sealed records that say what is page-table memory (key 2).
    pub meta: bool,
    /// Capability tables: CNode and TCB slots and the capability space's
    /// records (key 3).
    pub cnode: bool,
    /// Thread control blocks: a thread's saved registers (key 4).
    pub tcb: bool,
}

impl ObjectProtection {
    /// The `protect=` value that selects these classes (page tables
    /// always), as reports and the lab's lines spell it.
    pub const fn spelling(&self) -> &'static str {
        match (self.meta, self.cnode, self.tcb) {
            (false, false, false) => "pt",
            (true, false, false) => "pt,meta",
            (false, true, false) => "pt,cnode",
            (false, false, true) => "pt,tcb",
            (true, true, false) => "pt,meta,cnode",
            (true, false, true) => "pt,meta,tcb",
            (false, true, true) => "pt,cnode,tcb",
            (true, true, true) => "pt,meta,cnode,tcb",
        }
    }
}

impl Default for ObjectProtection {
    /// `protect=pt,meta`: page tables and the records about them.
    fn default() -> Self {
        Self {
            meta: true,
            cnode: false,
            tcb: false,
        }
    }
}

/// An in-kernel workload of the policy lab (`lab=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabWorkload {
    /// Page-table churn: thousands of tables allocated, then freed.
    Churn,
    /// Address spaces created, populated and destroyed (fork/exec-like).
    Spaces,
    /// A map/unmap storm while ordinary memory is nearly exhausted.
    Storm,
    /// A page-table trace, given as the first boot module, replayed.
    Trace,
}

impl LabWorkload {
    /// Every workload, in the order `lab=` names them.
    pub const ALL: [LabWorkload; 4] = [Self::Churn, Self::Spaces, Self::Storm, Self::Trace];

    /// Its name on the command line and in the lab's log lines.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Churn => "churn",
            Self::Spaces => "spaces",
            Self::Storm => "storm",
            Self::Trace => "trace",
        }
    }
}

/// What the kernel does with the first boot module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RootTaskMode {
    /// Run it once as the root task; its exit status ends the run (the
    /// default).
    #[default]
    Run,
    /// It is a user test suite: run it once per test, each time as a
    /// fresh process, and report the suite's counts.
    Suite,
}

/// Which in-kernel tests to run.
// Parsed once at boot; the size of the named list does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestSelection {
    /// Every registered test that runs in `all`.
    All,
    /// These tests, in this order (names are checked against the registry
    /// by the kernel, which knows it).
    Named(Vec<String<MAX_TEST_NAME>, MAX_SELECTED_TESTS>),
}

/// The typed configuration the command line selects.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KernelConfig {
    /// `ptprot=`: page-table protection policy (default `auto`).
    pub ptprot: ProtectionPolicy,
    /// `pkfault=`: response to protection-key faults (default `panic`).
    pub pkfault: FaultPolicy,
    /// `test=`: run in-kernel tests instead of the normal boot (default: none).
    pub test: Option<TestSelection>,
    /// `demo=`: a demonstration after the boot report (default: none).
    pub demo: Demo,
    /// `inject=empty-reserve`: fault injection, the split reserve gives
    /// nothing to direct-map splits (default: none).
    pub inject_empty_reserve: bool,
    /// `flushlimit=`: the INVLPG-vs-CR3 flush limit (default: measured).
    pub flush_limit: FlushLimit,
    /// `roottask=`: run the boot module as the root task, or as a user
    /// test suite (default: run).
    pub roottask: RootTaskMode,
    /// `memmap=`: when to dump the pageblock map (default: never).
    pub memmap: MemmapPoints,
    /// `ptstrategy=`: where page tables find protected memory (default
    /// `freetype`).
    pub ptstrategy: PtStrategy,
    /// `ptfallback=`: a page table when none can be protected (default
    /// `fail`).
    pub ptfallback: PtFallback,
    /// `lab=`: the lab workloads to run after boot, in order (default:
    /// none).
    pub lab: Vec<LabWorkload, { LabWorkload::ALL.len() }>,
    /// `protect=`: the object classes with keys of their own (default
    /// `pt,meta`).
    pub protect: ObjectProtection,
}

/// A command line the kernel refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A word that is not `key=value`.
    NotKeyValue(&'a str),
    /// A key not in [`OPTIONS`].
    UnknownOption(&'a str),
    /// A known key with a value it does not accept.
    BadValue {
        /// The option.
        option: &'static str,
        /// The value given.
        value: &'a str,
        /// What it accepts.
        accepted: &'static str,
    },
    /// The same key twice.
    Repeated(&'static str),
    /// `test=` lists more than [`MAX_SELECTED_TESTS`] names.
    TooManyTests {
        /// How many it lists.
        given: usize,
    },
    /// A `test=` name longer than [`MAX_TEST_NAME`] bytes.
    TestNameTooLong(&'a str),
}

/// Shows text from the command line with every character that is not
/// printable escaped (`\x1b`, `\u{202e}`, ...), and backslashes doubled,
/// so an echo can neither drive the reader's terminal (an ANSI escape
/// sequence, a backspace) nor differ from what was typed.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            match c {
                // escape_debug would also escape quotes, which are printable
                // and read fine inside the messages' quotes.
                '\'' | '"' => f.write_char(c)?,
                // \xNN for every ASCII control, where escape_debug would
                // write \u{1b} for ESC but \t for a tab.
                c if c.is_ascii_control() => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "{}", c.escape_debug())?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotKeyValue(word) => {
                write!(f, "'{}' is not of the form key=value", Escaped(word))
            }
            Self::UnknownOption(key) => write!(f, "unknown option '{}'", Escaped(key)),
            Self::BadValue {
                option,
                value,
                accepted,
            } => {
                write!(
                    f,
                    "option '{option}' does not accept '{}'; accepted values: {accepted}",
                    Escaped(value)
                )
            }
            Self::Repeated(option) => write!(f, "option '{option}' is given more than once"),
            Self::TooManyTests { given } => write!(
                f,
                "option 'test' lists {given} tests; at most {MAX_SELECTED_TESTS} can be named \
                 (test=all runs every test)"
            ),
            Self::TestNameTooLong(name) => write!(
                f,
                "option 'test' names a test of {} bytes ('{}'); test names have at most \
                 {MAX_TEST_NAME}",
                name.len(),
                Escaped(name)
            ),
        }
    }
}

impl KernelConfig {
    /// Parses a whole command line.
    pub fn parse(line: &str) -> Result<Self, CmdlineError<'_>> {
        let mut config = KernelConfig::default();
        let mut seen: Vec<&'static str, { OPTIONS.len() }> = Vec::new();
        for word in line.split_ascii_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or(CmdlineError::NotKeyValue(word))?;
            let &(option, accepted) = OPTIONS
                .iter()
                .find(|(name, _)| *name == key)
                .ok_or(CmdlineError::UnknownOption(key))?;
            if seen.contains(&option) {
                return Err(CmdlineError::Repeated(option));
            }
            // `seen` holds every entry of OPTIONS.
            let _ = seen.push(option);
            let bad_value = CmdlineError::BadValue {
                option,
                value,
                accepted,
            };
            match option {
                "ptprot" => config.ptprot = ProtectionPolicy::parse(value).ok_or(bad_value)?,
                "pkfault" => config.pkfault = FaultPolicy::parse(value).ok_or(bad_value)?,
                "test" => config.test = Some(parse_tests(value)?.ok_or(bad_value)?),
                "inject" => {
                    config.inject_empty_reserve = match value {
                        "none" => false,
                        "empty-reserve" => true,
                        _ => return Err(bad_value),
                    }
                }
                "flushlimit" => config.flush_limit = parse_flush_limit(value).ok_or(bad_value)?,
                "memmap" => config.memmap = parse_memmap(value).ok_or(bad_value)?,
                "roottask" => {
                    config.roottask = match value {
                        "run" => RootTaskMode::Run,
                        "suite" => RootTaskMode::Suite,
                        _ => return Err(bad_value),
                    }
                }
                "ptstrategy" => {
                    config.ptstrategy = match value {
                        "freetype" => PtStrategy::Freetype,
                        "pagewise" => PtStrategy::Pagewise,
                        "granular" => PtStrategy::Granular,
                        "protected-first" => PtStrategy::ProtectedFirst,
                        _ => return Err(bad_value),
                    }
                }
                "ptfallback" => {
                    config.ptfallback = match value {
                        "fail" => PtFallback::Fail,
                        "unprotected" => PtFallback::Unprotected,
                        _ => return Err(bad_value),
                    }
                }
                "lab" => config.lab = parse_lab(value).ok_or(bad_value)?,
                "protect" => config.protect = parse_protect(value).ok_or(bad_value)?,
                "demo" => {
                    config.demo = match value {
                        "none" => Demo::None,
                        "pte" => Demo::Pte,
                        _ => return Err(bad_value),
                    }
                }
                _ => unreachable!("every entry of OPTIONS is handled"),
            }
        }
        Ok(config)
    }
}

/// `none`, or a comma-separated list of dump points, each at most once.
fn parse_memmap(value: &str) -> Option<MemmapPoints> {
    let mut points = MemmapPoints::default();
    if value == "none" {
        return Some(points);
    }
    for point in value.split(',') {
        let seen = match point {
            "boot" => core::mem::replace(&mut points.boot, true),
            "churn" => core::mem::replace(&mut points.churn, true),
            "lab" => core::mem::replace(&mut points.lab, true),
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    Some(points)
}

/// `pt`, then any of `meta`, `cnode`, `tcb`, each at most once, in any
/// order; `cnode` and `tcb` need `meta`.
fn parse_protect(value: &str) -> Option<ObjectProtection> {
    let mut protect = ObjectProtection {
        meta: false,
        cnode: false,
        tcb: false,
    };
    let mut page_tables = false;
    for class in value.split(',') {
        let seen = match class {
            "pt" => core::mem::replace(&mut page_tables, true),
            "meta" => core::mem::replace(&mut protect.meta, true),
            "cnode" => core::mem::replace(&mut protect.cnode, true),
            "tcb" => core::mem::replace(&mut protect.tcb, true),
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    // The object classes' placement and the walk's view of it are sealed
    // records: keying objects while those stay writable protects nothing.
    let needs_meta = (protect.cnode || protect.tcb) && !protect.meta;
    (page_tables && !needs_meta).then_some(protect)
}

/// `none`, or a comma-separated list of lab workloads, each at most once.
fn parse_lab(value: &str) -> Option<Vec<LabWorkload, { LabWorkload::ALL.len() }>> {
    let mut workloads = Vec::new();
    if value == "none" {
        return Some(workloads);
    }
    for name in value.split(',') {
        let workload = LabWorkload::ALL.into_iter().find(|w| w.name() == name)?;
        if workloads.contains(&workload) {
            return None;
        }
        // Each of ALL at most once: it fits.
        let _ = workloads.push(workload);
    }
    Some(workloads)
}

/// `auto`, or a decimal number of pageblocks up to [`MAX_FLUSH_LIMIT`].
fn parse_flush_limit(value: &str) -> Option<FlushLimit> {
    if value == "auto" {
        return Some(FlushLimit::Measured);
    }
    // Digits only: `str::parse` would also take a leading `+`.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let limit: u16 = value.parse().ok()?;
    (limit <= MAX_FLUSH_LIMIT).then_some(FlushLimit::Fixed(limit))
}

/// `all`, or a comma-separated list of test names (`[a-z0-9_]`): `None`
/// for a malformed list, an error naming the limit for one too long.
fn parse_tests(value: &str) -> Result<Option<TestSelection>, CmdlineError<'_>> {
    if value == "all" {
        return Ok(Some(TestSelection::All));
    }
    let given = value.split(',').count();
    if given > MAX_SELECTED_TESTS {
        return Err(CmdlineError::TooManyTests { given });
    }
    let mut names = Vec::new();
    for name in value.split(',') {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Ok(None);
        }
        let name = String::try_from(name).map_err(|_| CmdlineError::TestNameTooLong(name))?;
        // At most MAX_SELECTED_TESTS names, checked above.
        let _ = names.push(name);
    }
    Ok(Some(TestSelection::Named(names)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_line_gives_defaults() {
        let config = KernelConfig::parse("").unwrap();
        assert_eq!(config, KernelConfig::default());
        assert_eq!(config.ptprot, ProtectionPolicy::Auto);
        assert_eq!(config.pkfault, FaultPolicy::Panic);
        assert_eq!(KernelConfig::parse("   ").unwrap(), config);
    }

    #[test]
    fn parses_the_lab_options() {
        let config = KernelConfig::parse(
            "ptstrategy=protected-first ptfallback=unprotected lab=storm,churn memmap=lab",
        )
        .unwrap();
        assert_eq!(config.ptstrategy, PtStrategy::ProtectedFirst);
        assert_eq!(config.ptfallback, PtFallback::Unprotected);
        assert_eq!(config.lab, [LabWorkload::Storm, LabWorkload::Churn]);
        assert!(config.memmap.lab && !config.memmap.boot);
        let defaults = KernelConfig::parse("").unwrap();
        assert_eq!(
            (defaults.ptstrategy, defaults.ptfallback, defaults.lab.len()),
            (PtStrategy::Freetype, PtFallback::Fail, 0)
        );
        for (word, strategy) in [
            ("freetype", PtStrategy::Freetype),
            ("pagewise", PtStrategy::Pagewise),
            ("granular", PtStrategy::Granular),
        ] {
            let line = std::format!("ptstrategy={word}");
            assert_eq!(KernelConfig::parse(&line).unwrap().ptstrategy, strategy);
        }
        assert!(KernelConfig::parse("lab=none").unwrap().lab.is_empty());
        for meta in [false, true] {
            for cnode in [false, true] {
                for tcb in [false, true] {
                    let classes = ObjectProtection { meta, cnode, tcb };
                    let spelled = parse_protect(classes.spelling());
                    // Spellings the parser refuses (cnode or tcb without
                    // meta) are still spelled; the others read back.
                    assert!(spelled.is_none_or(|back| back == classes), "{classes:?}");
                    assert_eq!(spelled.is_some(), meta || !(cnode || tcb), "{classes:?}");
                }
            }
        }
        let protect = |line| KernelConfig::parse(line).map(|c| c.protect);
        assert_eq!(
            protect(""),
            Ok(ObjectProtection {
                meta: true,
                cnode: false,
                tcb: false
            })
        );
        assert_eq!(
            protect("protect=tcb,pt,meta,cnode"),
            Ok(ObjectProtection {
                meta: true,
                cnode: true,
                tcb: true
            })
        );
        assert_eq!(
            protect("protect=pt"),
            Ok(ObjectProtection {
                meta: false,
                cnode: false,
                tcb: false
            })
        );
        assert_eq!(
            KernelConfig::parse("lab=churn,spaces,storm,trace")
                .unwrap()
                .lab,
            LabWorkload::ALL
        );
        for (bad, option) in [
            ("ptstrategy=buddy", "ptstrategy"),
            ("ptstrategy=", "ptstrategy"),
            ("ptfallback=dodge", "ptfallback"),
            ("lab=churn,churn", "lab"),
            ("lab=", "lab"),
            ("lab=churn,", "lab"),
            ("lab=none,churn", "lab"),
            ("lab=fork", "lab"),
            ("protect=cnode", "protect"),
            ("protect=pt,cnode", "protect"),
            ("protect=pt,tcb", "protect"),
            ("protect=pt,pt", "protect"),
            ("protect=pt,ipc", "protect"),
            ("protect=", "protect"),
        ] {
            assert!(
                matches!(KernelConfig::parse(bad), Err(CmdlineError::BadValue { option: o, .. }) if o == option),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_every_option() {
        let config = KernelConfig::parse(" ptprot=none  pkfault=soft test=a_1,b ").unwrap();
        assert_eq!(config.ptprot, ProtectionPolicy::None);
        assert_eq!(config.pkfault, FaultPolicy::Soft);
        let Some(TestSelection::Named(names)) = config.test else {
            panic!("expected names")
        };
        assert_eq!(
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<std::vec::Vec<_>>(),
            ["a_1", "b"]
        );
        assert_eq!(
            KernelConfig::parse("test=all").unwrap().test,
            Some(TestSelection::All)
        );
        assert_eq!(KernelConfig::parse("demo=pte").unwrap().demo, Demo::Pte);
        let points = |line| KernelConfig::parse(line).map(|c| c.memmap);
        assert_eq!(points(""), Ok(MemmapPoints::default()));
        assert_eq!(points("memmap=none"), Ok(MemmapPoints::default()));
        assert_eq!(
            points("memmap=churn,boot"),
            Ok(MemmapPoints {
                boot: true,
                churn: true,
                lab: false,
            })
        );
        for bad in [
            "memmap=",
            "memmap=boot,boot",
            "memmap=boot,",
            "memmap=peak",
            "memmap=none,boot",
        ] {
            assert!(
                matches!(
                    points(bad),
                    Err(CmdlineError::BadValue {
                        option: "memmap",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let mode = |line| KernelConfig::parse(line).map(|c| c.roottask);
        assert_eq!(mode(""), Ok(RootTaskMode::Run));
        assert_eq!(mode("roottask=run"), Ok(RootTaskMode::Run));
        assert_eq!(mode("roottask=suite"), Ok(RootTaskMode::Suite));
        assert!(matches!(
            mode("roottask=tests"),
            Err(CmdlineError::BadValue {
                option: "roottask",
                accepted: "run, suite",
                ..
            })
        ));
        let limit = |line| KernelConfig::parse(line).map(|c| c.flush_limit);
        assert_eq!(limit(""), Ok(FlushLimit::Measured));
        assert_eq!(limit("flushlimit=auto"), Ok(FlushLimit::Measured));
        assert_eq!(limit("flushlimit=0"), Ok(FlushLimit::Fixed(0)));
        assert_eq!(limit("flushlimit=512"), Ok(FlushLimit::Fixed(512)));
        for bad in [
            "flushlimit=513",
            "flushlimit=+5",
            "flushlimit=",
            "flushlimit=-1",
            "flushlimit=99999999",
        ] {
            assert!(
                matches!(
                    limit(bad),
                    Err(CmdlineError::BadValue {
                        option: "flushlimit",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            KernelConfig::parse("demo=all"),
            Err(CmdlineError::BadValue { option: "demo", .. })
        ));
    }

    #[test]
    fn rejects_bad_lines() {
        assert_eq!(
            KernelConfig::parse("ptprot"),
            Err(CmdlineError::NotKeyValue("ptprot"))
        );
        assert_eq!(
            KernelConfig::parse("quiet=1"),
            Err(CmdlineError::UnknownOption("quiet"))
        );
        assert_eq!(
            KernelConfig::parse("=x"),
            Err(CmdlineError::UnknownOption(""))
        );
        assert_eq!(
            KernelConfig::parse("ptprot=maybe"),
            Err(CmdlineError::BadValue {
                option: "ptprot",
                value: "maybe",
                accepted: ProtectionPolicy::ACCEPTED
            })
        );
        assert!(matches!(
            KernelConfig::parse("pkfault="),
            Err(CmdlineError::BadValue {
                option: "pkfault",
                ..
            })
        ));
        assert_eq!(
            KernelConfig::parse("ptprot=pks ptprot=ro"),
            Err(CmdlineError::Repeated("ptprot"))
        );
        for bad in ["test=", "test=a,,b", "test=Bad", "test=a-b"] {
            assert!(
                matches!(
                    KernelConfig::parse(bad),
                    Err(CmdlineError::BadValue { option: "test", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn test_list_limits_are_named() {
        let longest = "x".repeat(MAX_TEST_NAME);
        let line = std::format!("test={longest}");
        assert!(KernelConfig::parse(&line).is_ok());
        let long = "x".repeat(MAX_TEST_NAME + 1);
        let line = std::format!("test={long}");
        let error = KernelConfig::parse(&line).unwrap_err();
        assert_eq!(error, CmdlineError::TestNameTooLong(&long));
        assert_eq!(
            error.to_string(),
            std::format!(
                "option 'test' names a test of 65 bytes ('{long}'); test names have at most 64"
            )
        );

        let most = std::format!("test={}", ["t"; MAX_SELECTED_TESTS].join(","));
        assert!(KernelConfig::parse(&most).is_ok());
        let many = std::format!("test={}", ["t"; MAX_SELECTED_TESTS + 1].join(","));
        let error = KernelConfig::parse(&many).unwrap_err();
        assert_eq!(error, CmdlineError::TooManyTests { given: 17 });
        assert_eq!(
            error.to_string(),
            "option 'test' lists 17 tests; at most 16 can be named (test=all runs every test)"
        );
        // A malformed list is still a bad value, whatever its length.
        let bad = std::format!("test={},", ["t"; 3].join(","));
        assert!(matches!(
            KernelConfig::parse(&bad),
            Err(CmdlineError::BadValue { option: "test", .. })
        ));
    }

    #[test]
    fn echoes_escape_what_is_not_printable() {
        let escaped = |text: &str| std::format!("{}", Escaped(text));
        // An ANSI "clear screen", backspace, DEL, a tab and a C1 control.
        assert_eq!(escaped("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escaped("x\x08\x7fy\tz"), "x\\x08\\x7fy\\x09z");
        assert_eq!(escaped("\u{9b}31m"), "\\u{9b}31m");
        // A right-to-left override would reorder what follows on screen.
        assert_eq!(escaped("ab\u{202e}cd"), "ab\\u{202e}cd");
        // Backslashes are doubled so an escape cannot be forged.
        assert_eq!(escaped("a\\x1b"), "a\\\\x1b");
        // Printable text, quotes and non-ASCII letters pass unchanged.
        assert_eq!(escaped("ptprot='pks' \"é\""), "ptprot='pks' \"é\"");

        for (line, shown) in [
            ("\x1b[2J", "'\\x1b[2J' is not of the form key=value"),
            ("a\x7f=1", "unknown option 'a\\x7f'"),
            (
                "demo=\x08pte",
                "option 'demo' does not accept '\\x08pte'; accepted values: none, pte",
            ),
        ] {
            let error = KernelConfig::parse(line).unwrap_err();
            assert_eq!(error.to_string(), shown, "{line:?}");
            assert!(!error.to_string().chars().any(|c| c.is_control()));
        }
    }

    #[test]
    fn inject_and_demo_take_their_listed_values() {
        let parse = KernelConfig::parse;
        assert!(parse("inject=empty-reserve").unwrap().inject_empty_reserve);
        assert!(!parse("inject=none").unwrap().inject_empty_reserve);
        assert_eq!(
            parse("inject=all"),
            Err(CmdlineError::BadValue {
                option: "inject",
                value: "all",
                accepted: "none, empty-reserve"
            })
        );
        // `none` is the default, but naming it must still be accepted.
        assert_eq!(parse("demo=none").unwrap().demo, Demo::None);
        assert_eq!(
            parse("demo=pte demo=none"),
            Err(CmdlineError::Repeated("demo"))
        );
    }

    #[test]
    fn errors_name_the_option_and_accepted_values() {
        let err = KernelConfig::parse("ptprot=maybe").unwrap_err();
        assert_eq!(
            err.to_string(),
            "option 'ptprot' does not accept 'maybe'; accepted values: pks, ro, none, auto"
        );
    }
}
