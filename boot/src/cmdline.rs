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

/// Every option, with the values it accepts, as shown in error messages.
pub const OPTIONS: &[(&str, &str)] = &[
    ("ptprot", ProtectionPolicy::ACCEPTED),
    ("pkfault", FaultPolicy::ACCEPTED),
    ("test", "all, or NAME[,NAME...] of in-kernel tests"),
    ("demo", "none, pte"),
    ("inject", "none, empty-reserve"),
    ("flushlimit", "auto, or 0-512 pageblocks"),
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
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotKeyValue(word) => write!(f, "'{word}' is not of the form key=value"),
            Self::UnknownOption(key) => write!(f, "unknown option '{key}'"),
            Self::BadValue {
                option,
                value,
                accepted,
            } => {
                write!(
                    f,
                    "option '{option}' does not accept '{value}'; accepted values: {accepted}"
                )
            }
            Self::Repeated(option) => write!(f, "option '{option}' is given more than once"),
        }
    }
}

impl KernelConfig {
    /// Parses a whole command line.
    pub fn parse(line: &str) -> Result<Self, CmdlineError<'_>> {
        let mut config = KernelConfig::default();
        let mut seen: Vec<&'static str, 8> = Vec::new();
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
            // OPTIONS has fewer entries than `seen` holds.
            let _ = seen.push(option);
            let bad_value = CmdlineError::BadValue {
                option,
                value,
                accepted,
            };
            match option {
                "ptprot" => config.ptprot = ProtectionPolicy::parse(value).ok_or(bad_value)?,
                "pkfault" => config.pkfault = FaultPolicy::parse(value).ok_or(bad_value)?,
                "test" => config.test = Some(parse_tests(value).ok_or(bad_value)?),
                "inject" => {
                    config.inject_empty_reserve = match value {
                        "none" => false,
                        "empty-reserve" => true,
                        _ => return Err(bad_value),
                    }
                }
                "flushlimit" => config.flush_limit = parse_flush_limit(value).ok_or(bad_value)?,
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

/// `all`, or a comma-separated list of test names (`[a-z0-9_]`).
fn parse_tests(value: &str) -> Option<TestSelection> {
    if value == "all" {
        return Some(TestSelection::All);
    }
    let mut names = Vec::new();
    for name in value.split(',') {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return None;
        }
        names.push(String::try_from(name).ok()?).ok()?;
    }
    Some(TestSelection::Named(names))
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
        let long = std::format!("test={}", "x".repeat(MAX_TEST_NAME + 1));
        assert!(KernelConfig::parse(&long).is_err());
        let many = std::format!("test={}", ["t"; MAX_SELECTED_TESTS + 1].join(","));
        assert!(KernelConfig::parse(&many).is_err());
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
