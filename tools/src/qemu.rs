//! Running the kernel under QEMU: [`QemuConfig`], finding (or installing)
//! QEMU, and [`run`], which boots the image and collects a [`RunReport`].
//!
//! [`run`] first checks the configuration ([`crate::preflight`]) and
//! returns a refused report without starting QEMU if the kernel could not
//! report the problem itself; a missing kernel image or boot module
//! (`-initrd`) is an error before QEMU starts. Under KVM with `-cpu host` it retries once
//! with [`KVM_HOST_FALLBACK_CPU`] when QEMU cannot set the host CPU up
//! ([`kvm_cpu_fallback`]).
//!
//! Streams: COM1 is QEMU's stdout (`-serial stdio`), read line by line.
//! COM2 goes to a Unix-domain socket in a private temp dir (`-serial
//! unix:PATH`); QEMU connects to it as a client at startup and the runner
//! decodes the defmt frames as they arrive. QEMU's stderr is read too. One
//! thread per stream sends events over a channel, so the main thread sees
//! them in arrival order, echoes them if asked, and enforces the timeout.
//! Arrival order is the host's: lines the guest wrote within microseconds
//! of each other on different ports may swap places.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use defmt_decoder::Table;

use crate::defmt_log::{self, Decoded};
use crate::error::describe_exit;
use crate::preflight;
use crate::report::{LOG_PREFIX, NOTE_PREFIX, STDERR_PREFIX};
use crate::{Outcome, RunReport, RunnerError};

/// The QEMU binary the runner looks for on PATH.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The Debian package that provides [`QEMU_BINARY`].
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// What to run by hand when QEMU is missing.
pub const QEMU_INSTALL_HINT: &str = "sudo apt-get install -y qemu-system-x86";
/// The TCP port of QEMU's gdbstub under `-s`.
pub const GDB_PORT: u16 = 1234;

/// How often the main loop checks QEMU's status while waiting for output.
const POLL: Duration = Duration::from_millis(10);

/// The `-cpu` model KVM's `host` is retried with when QEMU cannot set it up
/// ([`kvm_cpu_fallback`]): the host CPU without `IA32_ARCH_CAPABILITIES`,
/// the MSR (0x10a) that some nested KVM hosts refuse to have written.
pub const KVM_HOST_FALLBACK_CPU: &str = "host,-arch-capabilities";

/// What QEMU writes to stderr when KVM refuses one of the vCPU's MSRs.
const MSR_SET_FAILED: &str = "failed to set MSR";

/// Which QEMU accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Software emulation. Has PKS with `-cpu max` (see PLATFORM.md).
    #[default]
    Tcg,
    /// Hardware virtualisation. This host CPU has no PKS, so KVM is for
    /// fallback-mode and timing runs only.
    Kvm,
}

impl Accel {
    /// The value of QEMU's `-accel` option.
    pub fn as_qemu_arg(self) -> &'static str {
        match self {
            Self::Tcg => "tcg",
            Self::Kvm => "kvm",
        }
    }

    /// The `-cpu` model to use when none is given: `max` under TCG (it has
    /// PKS), `host` under KVM.
    pub fn default_cpu(self) -> &'static str {
        match self {
            Self::Tcg => "max",
            Self::Kvm => "host",
        }
    }
}

/// Everything that varies between QEMU runs of the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The kernel ELF (unstripped: the defmt table is read from it).
    pub kernel: PathBuf,
    /// `-cpu` model.
    pub cpu: String,
    /// `-m` memory size, in QEMU's syntax (`128M`, `1G`).
    pub memory: String,
    /// `-smp` CPU count.
    pub smp: u32,
    /// Kernel command line (`-append`); may be empty.
    pub append: String,
    /// A file QEMU loads into RAM as the first PVH boot module
    /// (`-initrd`): the root task's ELF. `None`: no module.
    pub initrd: Option<PathBuf>,
    /// Kill QEMU after this long and report [`Outcome::Timeout`].
    pub timeout: Duration,
    /// Accelerator.
    pub accel: Accel,
    /// Start paused with the gdbstub on tcp::1234 (`-s -S`); no timeout.
    pub gdb: bool,
    /// Print the interleaved log to stdout live (the CLI); otherwise only
    /// collect it (tests, which run in parallel). Echo writes to the real
    /// stdout, past libtest's output capture.
    pub echo: bool,
}

impl QemuConfig {
    /// A configuration with the defaults: `-cpu max -m 128M -smp 1`, empty
    /// command line, 60 s timeout, TCG, no gdb, no echo.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            cpu: Accel::Tcg.default_cpu().to_string(),
            memory: "128M".to_string(),
            smp: 1,
            append: String::new(),
            initrd: None,
            timeout: Duration::from_secs(60),
            accel: Accel::Tcg,
            gdb: false,
            echo: false,
        }
    }

    /// Sets the `-cpu` model.
    pub fn cpu(mut self, cpu: impl Into<String>) -> Self {
        self.cpu = cpu.into();
        self
    }

    /// Sets the `-m` memory size (`128M`, `1G`).
    pub fn memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = memory.into();
        self
    }

    /// Sets the `-smp` CPU count.
    pub fn smp(mut self, smp: u32) -> Self {
        self.smp = smp;
        self
    }

    /// Sets the kernel command line.
    pub fn append(mut self, append: impl Into<String>) -> Self {
        self.append = append.into();
        self
    }

    /// Sets the boot module (`-initrd`): the root task's ELF.
    pub fn initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.initrd = Some(initrd.into());
        self
    }

    /// Sets the timeout after which QEMU is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the accelerator, and the CPU model to that accelerator's
    /// default ([`Accel::default_cpu`]); call [`QemuConfig::cpu`] afterwards
    /// to choose another.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self.cpu = accel.default_cpu().to_string();
        self
    }

    /// Starts QEMU paused with the gdbstub listening (and no timeout).
    pub fn gdb(mut self, gdb: bool) -> Self {
        self.gdb = gdb;
        self
    }

    /// Echoes the interleaved log to stdout while running.
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// QEMU's arguments (without the program), with `com2` as the value of
    /// the second `-serial` option.
    pub fn qemu_args(&self, com2: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-M".into(),
            "pc".into(),
            "-accel".into(),
            self.accel.as_qemu_arg().into(),
            "-cpu".into(),
            self.cpu.clone(),
            "-m".into(),
            self.memory.clone(),
            "-smp".into(),
            self.smp.to_string(),
            "-kernel".into(),
            self.kernel.to_string_lossy().into_owned(),
            "-append".into(),
            self.append.clone(),
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-serial".into(),
            com2.into(),
        ];
        if let Some(initrd) = &self.initrd {
            args.extend(["-initrd".into(), initrd.to_string_lossy().into_owned()]);
        }
        if self.gdb {
            args.extend(["-s".into(), "-S".into()]);
        }
        args
    }

    /// The command a person runs to attach gdb to a `gdb` run.
    pub fn gdb_attach_command(&self) -> String {
        format!(
            "gdb {} -ex 'target remote :{GDB_PORT}'",
            shell_quote(&self.kernel.to_string_lossy())
        )
    }
}

/// Serialises installs, so parallel tests do not race on apt's lock.
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// Finds `qemu-system-x86_64` on PATH. If it is missing and we are root on
/// a system with apt-get, installs `qemu-system-x86` (saying so) and looks
/// again; otherwise fails with the command to run by hand.
pub fn find_or_install_qemu() -> Result<PathBuf, RunnerError> {
    // A poisoned lock only means another caller panicked; the check is safe.
    let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(qemu) = find_in_path(QEMU_BINARY) {
        return Ok(qemu);
    }
    if !is_root() || find_in_path("apt-get").is_none() {
        return Err(RunnerError::QemuNotFound {
            hint: format!("install it with `{QEMU_INSTALL_HINT}`"),
        });
    }

    eprintln!(
        "runner: {QEMU_BINARY} not found; installing the Debian package {QEMU_PACKAGE} \
         (apt-get update && apt-get install -y {QEMU_PACKAGE})"
    );
    for args in [vec!["update"], vec!["install", "-y", QEMU_PACKAGE]] {
        let command = format!("apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map_err(|e| RunnerError::io(format!("running `{command}`"), e))?;
        if !status.success() {
            return Err(RunnerError::QemuInstallFailed {
                command,
                status: describe_exit(status),
                hint: QEMU_INSTALL_HINT.to_string(),
            });
        }
    }
    find_in_path(QEMU_BINARY).ok_or_else(|| RunnerError::QemuNotFound {
        hint: format!(
            "apt-get installed {QEMU_PACKAGE} but {QEMU_BINARY} is still not on PATH; \
             check PATH, or install it with `{QEMU_INSTALL_HINT}`"
        ),
    })
}

/// The first executable file called `name` in a PATH directory.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root. /proc/self belongs to the effective
/// user; `id -u` is the fallback where /proc is missing.
fn is_root() -> bool {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"0")
}

/// Quotes `arg` for a POSIX shell, leaving plain words as they are.
pub fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// One thing that happened while QEMU ran, in arrival order.
enum Event {
    /// A COM1 line, with the moment its reader thread read it.
    Console(String, Instant),
    Log(String),
    Note(String),
    Stderr(String),
}

/// Gathers events into the report's fields and echoes them if asked.
#[derive(Default)]
struct Collector {
    echo: bool,
    /// When QEMU started; console lines are timed from here.
    started: Option<Instant>,
    console: String,
    console_arrivals: Vec<Duration>,
    log: Vec<String>,
    notes: Vec<String>,
    interleaved: Vec<String>,
    stderr: String,
}

impl Collector {
    fn handle(&mut self, event: Event) {
        let shown = match event {
            Event::Console(line, read_at) => {
                let at = self
                    .started
                    .map_or(Duration::ZERO, |s| read_at.saturating_duration_since(s));
                self.console_arrivals.push(at);
                self.console.push_str(&line);
                self.console.push('\n');
                self.interleaved.push(line.clone());
                line
            }
            Event::Log(line) => {
                let shown = prefix_lines(LOG_PREFIX, &line);
                self.log.push(line);
                self.interleaved.push(shown.clone());
                shown
            }
            Event::Note(note) => {
                let shown = format!("{NOTE_PREFIX}{note}");
                self.notes.push(note);
                self.interleaved.push(shown.clone());
                shown
            }
            Event::Stderr(line) => {
                // QEMU's stderr has its own section in the transcript.
                self.stderr.push_str(&line);
                self.stderr.push('\n');
                format!("{STDERR_PREFIX}{line}")
            }
        };
        if self.echo {
            let mut out = io::stdout().lock();
            // A closed stdout (e.g. `runner | head`) must not stop the run.
            let _ = writeln!(out, "{shown}").and_then(|()| out.flush());
        }
    }
}

/// Prefixes every line of a possibly multi-line message.
fn prefix_lines(prefix: &str, text: &str) -> String {
    text.split('\n')
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A private temp directory for the COM2 socket, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("kernel-runner-{}-{n}", std::process::id()));
            // create_dir fails if it exists, so the directory is ours alone.
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp is harmless.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Escapes a value for a QEMU option list, where `,` separates options.
fn qemu_opt_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// The listening end of COM2: a Unix socket in a private temp dir.
struct Com2Socket {
    /// Holds the socket; removed when dropped.
    dir: TempDir,
    listener: UnixListener,
    /// The value for QEMU's second `-serial` option.
    qemu_arg: String,
}

impl Com2Socket {
    /// Binds the socket. It must exist before QEMU starts, which connects
    /// to it at startup.
    fn bind() -> Result<Self, RunnerError> {
        let dir = TempDir::new()
            .map_err(|e| RunnerError::io("creating a temp dir for the COM2 socket", e))?;
        let path = dir.0.join("com2.sock");
        let listener = UnixListener::bind(&path).map_err(|e| {
            RunnerError::io(format!("creating the COM2 socket {}", path.display()), e)
        })?;
        // Non-blocking accept, so the thread can give up if QEMU never connects.
        listener
            .set_nonblocking(true)
            .map_err(|e| RunnerError::io("setting up the COM2 socket", e))?;
        let qemu_arg = format!("unix:{}", qemu_opt_escape(&path.to_string_lossy()));
        Ok(Self {
            dir,
            listener,
            qemu_arg,
        })
    }
}

/// Reads the defmt table from the kernel ELF. A missing or unreadable table
/// is not fatal: the run goes on with COM2 ignored, and a note says so.
fn load_defmt_table(
    kernel: &Path,
    collector: &mut Collector,
) -> Result<Option<Table>, RunnerError> {
    let elf = fs::read(kernel).map_err(|e| {
        RunnerError::io(format!("reading the kernel image {}", kernel.display()), e)
    })?;
    let note = match defmt_log::load_table(&elf) {
        Ok(Some(table)) => return Ok(Some(table)),
        Ok(None) => "the kernel ELF has no defmt table; COM2 output is ignored".to_string(),
        Err(e) => {
            format!("cannot read the defmt table from the kernel ELF ({e}); COM2 output is ignored")
        }
    };
    collector.handle(Event::Note(note));
    Ok(None)
}

/// Boots the kernel under QEMU as `cfg` says and reports what happened.
///
/// Errors are for runs that could not happen (no QEMU, no kernel, host
/// I/O); anything the kernel or QEMU did is in [`RunReport::outcome`].
/// A configuration the kernel could not report on itself is refused before
/// anything else, QEMU and the kernel image not needed:
/// [`RunReport::refusal`] says why (and with `echo`, its line is printed).
/// Under KVM with `-cpu host`, a QEMU that cannot set up the host CPU is
/// retried once with [`KVM_HOST_FALLBACK_CPU`]; the report is the retry's,
/// with a note saying so.
pub fn run(cfg: &QemuConfig) -> Result<RunReport, RunnerError> {
    if let Err(refusal) = preflight::check(cfg) {
        let report = RunReport::refused(refusal);
        if cfg.echo {
            echo_lines(&report.interleaved);
        }
        return Ok(report);
    }
    if !cfg.kernel.is_file() {
        return Err(RunnerError::KernelNotFound(cfg.kernel.clone()));
    }
    // QEMU would stop with its own error, after starting; say it first.
    if let Some(initrd) = cfg.initrd.as_ref().filter(|path| !path.is_file()) {
        return Err(RunnerError::InitrdNotFound(initrd.clone()));
    }
    let qemu = find_or_install_qemu()?;
    run_with_fallback(&qemu, cfg)
}

/// [`run_qemu`], and the one retry [`kvm_cpu_fallback`] asks for.
fn run_with_fallback(qemu: &Path, cfg: &QemuConfig) -> Result<RunReport, RunnerError> {
    let report = run_qemu(qemu, cfg)?;
    let Some(fallback) = kvm_cpu_fallback(cfg, report.outcome, &report.qemu_stderr) else {
        return Ok(report);
    };
    let note = fallback.to_string();
    let shown = format!("{NOTE_PREFIX}{note}");
    if cfg.echo {
        echo_lines(std::slice::from_ref(&shown));
    }
    let mut retry = run_qemu(qemu, &cfg.clone().cpu(fallback.cpu))?;
    retry.notes.insert(0, note);
    retry.interleaved.insert(0, shown);
    Ok(retry)
}

/// Why a KVM `-cpu host` run is retried, and with what ([`kvm_cpu_fallback`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFallback {
    /// The `-cpu` model to retry with.
    pub cpu: String,
    /// What QEMU said went wrong ("failed to set MSR 0x10a").
    pub reason: String,
}

impl fmt::Display for CpuFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "-cpu host failed on this KVM host ({}); retrying with -cpu {}",
            self.reason, self.cpu
        )
    }
}

/// Whether a finished run should be retried with [`KVM_HOST_FALLBACK_CPU`]:
/// only under [`Accel::Kvm`] with `-cpu host` exactly, when QEMU itself
/// failed and its stderr says KVM refused an MSR. QEMU reports that with
/// status 1, or (QEMU 7, which asserts after the message) by aborting, so
/// both [`Outcome::QemuError`] and [`Outcome::Signalled`] count. Any other
/// CPU model was chosen by hand and is left alone, so a retry never
/// repeats.
pub fn kvm_cpu_fallback(
    cfg: &QemuConfig,
    outcome: Outcome,
    qemu_stderr: &str,
) -> Option<CpuFallback> {
    if cfg.accel != Accel::Kvm || cfg.cpu != "host" {
        return None;
    }
    if !matches!(outcome, Outcome::QemuError | Outcome::Signalled) {
        return None;
    }
    let at = qemu_stderr.find(MSR_SET_FAILED)?;
    let rest = &qemu_stderr[at + MSR_SET_FAILED.len()..];
    // The MSR's number, when QEMU gives one: "failed to set MSR 0x10a to ...".
    let reason = match rest.split_whitespace().next() {
        Some(msr) if rest.starts_with(' ') && msr.starts_with("0x") => {
            format!("{MSR_SET_FAILED} {msr}")
        }
        _ => MSR_SET_FAILED.to_string(),
    };
    Some(CpuFallback {
        cpu: KVM_HOST_FALLBACK_CPU.to_string(),
        reason,
    })
}

/// Prints lines to stdout as the live echo does.
fn echo_lines(lines: &[String]) {
    let mut out = io::stdout().lock();
    for line in lines {
        // A closed stdout (e.g. `runner | head`) must not stop the run.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Boots the kernel once with the QEMU binary at `qemu`.
fn run_qemu(qemu: &Path, cfg: &QemuConfig) -> Result<RunReport, RunnerError> {
    let mut collector = Collector {
        echo: cfg.echo,
        ..Collector::default()
    };

    let com2 = match load_defmt_table(&cfg.kernel, &mut collector)? {
        Some(table) => Some((Com2Socket::bind()?, table)),
        None => None,
    };
    let com2_arg = com2
        .as_ref()
        .map_or("null", |(socket, _)| socket.qemu_arg.as_str());
    let args = cfg.qemu_args(com2_arg);
    let command = std::iter::once(qemu.to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");

    if cfg.gdb {
        eprintln!(
            "runner: QEMU starts paused with its gdbstub on tcp::{GDB_PORT}; attach with:\n    {}",
            cfg.gdb_attach_command()
        );
    }
    let mut child = Command::new(qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunnerError::io(format!("starting QEMU ({command})"), e))?;
    let start = Instant::now();
    collector.started = Some(start);

    // One reader thread per stream; see the module doc.
    let (tx, rx) = mpsc::channel::<Event>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<(&str, JoinHandle<()>)> = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        threads.push((
            "COM1",
            spawn_line_reader(stdout, tx.clone(), |line| {
                Event::Console(line, Instant::now())
            }),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        threads.push((
            "QEMU stderr",
            spawn_line_reader(stderr, tx.clone(), Event::Stderr),
        ));
    }
    // The temp dir (and the socket in it) lives until the run is over.
    let mut com2_dir = None;
    if let Some((socket, table)) = com2 {
        let Com2Socket { dir, listener, .. } = socket;
        com2_dir = Some(dir);
        let (tx, stop) = (tx.clone(), Arc::clone(&stop));
        threads.push((
            "COM2",
            thread::spawn(move || read_com2(listener, table, tx, &stop)),
        ));
    }
    // Only the reader threads hold senders now: a closed channel means all
    // streams have ended.
    drop(tx);

    let deadline = (!cfg.gdb).then(|| start + cfg.timeout);
    let exit = supervise(&mut child, &rx, &mut collector, deadline);
    let elapsed = start.elapsed();

    // QEMU is gone, so its pipes and socket are closed and the readers end;
    // `stop` ends the COM2 accept loop if QEMU never connected.
    stop.store(true, Ordering::Relaxed);
    for (name, handle) in threads {
        if handle.join().is_err() {
            collector.handle(Event::Note(format!(
                "the {name} reader thread panicked; its output may be incomplete"
            )));
        }
    }
    for event in rx.try_iter() {
        collector.handle(event);
    }
    drop(com2_dir);

    let (outcome, status) = match exit? {
        Some(status) => (Outcome::from_exit_status(status), status.code()),
        None => (Outcome::Timeout(cfg.timeout), None),
    };
    Ok(RunReport {
        outcome,
        status,
        console: collector.console,
        console_arrivals: collector.console_arrivals,
        log: collector.log,
        notes: collector.notes,
        interleaved: collector.interleaved,
        qemu_stderr: collector.stderr,
        elapsed,
        command,
        refusal: None,
    })
}

/// Handles events as they arrive until QEMU exits (`Some(status)`) or the
/// deadline passes (`None`, QEMU killed). QEMU is never left running.
fn supervise(
    child: &mut Child,
    rx: &Receiver<Event>,
    collector: &mut Collector,
    deadline: Option<Instant>,
) -> Result<Option<ExitStatus>, RunnerError> {
    loop {
        match rx.recv_timeout(POLL) {
            Ok(event) => {
                collector.handle(event);
                while let Ok(event) = rx.try_recv() {
                    collector.handle(event);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // All streams closed but QEMU still running: keep polling it.
            Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
        }
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {}
            Err(e) => {
                kill_and_reap(child);
                return Err(RunnerError::io("waiting for QEMU", e));
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            kill_and_reap(child);
            return Ok(None);
        }
    }
}

/// Kills QEMU and waits for it, so no zombie or stray VM is left behind.
fn kill_and_reap(child: &mut Child) {
    // Errors mean it already exited, which is what we want.
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads `source` line by line (bytes, so bad UTF-8 cannot stop it) and
/// sends each line without its `\n` or `\r\n`.
fn spawn_line_reader<R: Read + Send + 'static>(
    source: R,
    tx: Sender<Event>,
    wrap: fn(String) -> Event,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches('\n').trim_end_matches('\r');
                    if tx.send(wrap(line.to_string())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// Waits for QEMU to connect to the COM2 socket, then decodes defmt frames
/// until QEMU closes it.
fn read_com2(listener: UnixListener, table: Table, tx: Sender<Event>, stop: &AtomicBool) {
    let Some(stream) = accept_until_stopped(&listener, &tx, stop) else {
        return;
    };
    defmt_log::decode_stream(&table, stream, |decoded| {
        let event = match decoded {
            Decoded::Line(line) => Event::Log(line),
            Decoded::Note(note) => Event::Note(note),
        };
        // The receiver outlives this thread; a send error cannot happen.
        let _ = tx.send(event);
    });
}

/// Accepts QEMU's connection, polling so that a QEMU that died before
/// connecting cannot leave this thread blocked forever.
fn accept_until_stopped(
    listener: &UnixListener,
    tx: &Sender<Event>,
    stop: &AtomicBool,
) -> Option<UnixStream> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => match stream.set_nonblocking(false) {
                Ok(()) => return Some(stream),
                Err(e) => {
                    let _ = tx.send(Event::Note(format!("cannot read the COM2 socket: {e}")));
                    return None;
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Event::Note(format!(
                    "accepting the COM2 connection failed: {e}"
                )));
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let cfg = QemuConfig::new("k.elf");
        assert_eq!(cfg.kernel, PathBuf::from("k.elf"));
        assert_eq!(cfg.cpu, "max");
        assert_eq!(cfg.memory, "128M");
        assert_eq!(cfg.smp, 1);
        assert_eq!(cfg.append, "");
        assert_eq!(cfg.timeout, Duration::from_secs(60));
        assert_eq!(cfg.accel, Accel::Tcg);
        assert!(!cfg.gdb);
        assert!(!cfg.echo);
    }

    #[test]
    fn builders_set_fields() {
        let cfg = QemuConfig::new("k")
            .accel(Accel::Kvm)
            .memory("1G")
            .smp(4)
            .append("pks=ro fault=report")
            .timeout(Duration::from_secs(5))
            .gdb(true)
            .echo(true);
        assert_eq!(cfg.cpu, "host", "KVM defaults to -cpu host");
        assert_eq!((cfg.memory.as_str(), cfg.smp), ("1G", 4));
        assert_eq!(cfg.append, "pks=ro fault=report");
        assert_eq!(cfg.timeout, Duration::from_secs(5));
        assert!(cfg.gdb && cfg.echo);
        assert_eq!(cfg.cpu("qemu64,+pks").cpu, "qemu64,+pks");
    }

    #[test]
    fn qemu_args_follow_the_contract() {
        let cfg = QemuConfig::new("/k/kernel").append("");
        let args = cfg.qemu_args("unix:run-dir/com2.sock");
        let expected = "-M pc -accel tcg -cpu max -m 128M -smp 1 -kernel /k/kernel -append  \
                        -device isa-debug-exit,iobase=0xf4,iosize=0x04 -no-reboot -display none \
                        -monitor none -serial stdio -serial unix:run-dir/com2.sock";
        assert_eq!(args.join(" "), expected);
        // The empty command line is still passed, as its own argument.
        let append = args
            .iter()
            .position(|a| a == "-append")
            .map(|i| &args[i + 1]);
        assert_eq!(append.map(String::as_str), Some(""));
    }

    #[test]
    fn an_initrd_is_passed_as_the_boot_module() {
        let args = QemuConfig::new("k")
            .initrd("/r/root task")
            .qemu_args("null");
        let at = args.iter().position(|a| a == "-initrd");
        assert_eq!(
            at.map(|i| args[i + 1].as_str()),
            Some("/r/root task"),
            "{args:?}"
        );
        assert!(
            !QemuConfig::new("k")
                .qemu_args("null")
                .contains(&"-initrd".to_string())
        );
    }

    #[test]
    fn a_missing_initrd_is_a_clear_error_before_qemu_starts() {
        // A kernel that exists (this crate's manifest stands in: QEMU is
        // never started), and a module that does not.
        let kernel = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let cfg = QemuConfig::new(kernel).initrd("/nonexistent/roottask");
        match run(&cfg) {
            Err(error @ RunnerError::InitrdNotFound(_)) => assert_eq!(
                error.to_string(),
                "boot module not found at /nonexistent/roottask: --initrd (make run \
                 ROOTTASK=) names the root task's ELF file"
            ),
            other => panic!("expected InitrdNotFound, got {other:?}"),
        }
        // A directory is not a module either.
        let cfg = QemuConfig::new(kernel).initrd(env!("CARGO_MANIFEST_DIR"));
        assert!(matches!(run(&cfg), Err(RunnerError::InitrdNotFound(_))));
    }

    #[test]
    fn gdb_adds_stub_and_pause() {
        let cfg = QemuConfig::new("/k/my kernel").gdb(true);
        let args = cfg.qemu_args("null");
        assert_eq!(&args[args.len() - 2..], ["-s", "-S"]);
        assert_eq!(
            cfg.gdb_attach_command(),
            "gdb '/k/my kernel' -ex 'target remote :1234'"
        );
    }

    #[test]
    fn kvm_uses_kvm_accel() {
        let args = QemuConfig::new("k").accel(Accel::Kvm).qemu_args("null");
        assert!(args.join(" ").contains("-accel kvm -cpu host"));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("plain/path-1.0"), "plain/path-1.0");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn qemu_option_commas_are_doubled() {
        assert_eq!(qemu_opt_escape("run-dir/a,b"), "run-dir/a,,b");
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let err = run(&QemuConfig::new("/nonexistent/kernel")).err();
        match err {
            Some(RunnerError::KernelNotFound(p)) => {
                assert_eq!(p, PathBuf::from("/nonexistent/kernel"))
            }
            other => panic!("expected KernelNotFound, got {other:?}"),
        }
    }

    #[test]
    fn refusals_come_before_needing_a_kernel_or_qemu() {
        // No kernel image exists, and no QEMU is needed: the refusal comes first.
        let cases = [
            (
                QemuConfig::new("/nonexistent/kernel").append("x".repeat(1025)),
                Outcome::BadCommandLine,
                "kernel command line rejected: command line is longer than 1024 bytes",
            ),
            (
                QemuConfig::new("/nonexistent/kernel").append("a\0b"),
                Outcome::BadCommandLine,
                "kernel command line rejected: command line has a NUL byte at offset 1, \
                 where QEMU would cut it short",
            ),
            (
                QemuConfig::new("/nonexistent/kernel").memory("2M"),
                Outcome::NotEnoughMemory,
                "not enough memory: -m 2M does not hold",
            ),
        ];
        for (cfg, outcome, line) in cases {
            let report = match run(&cfg) {
                Ok(report) => report,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(report.outcome, outcome);
            assert_eq!(report.status, None);
            assert!(report.refusal.is_some());
            assert!(
                report.interleaved[0].starts_with(line),
                "{:?}",
                report.interleaved
            );
        }
        // At the limit the run goes on, to the missing kernel.
        let at_limit = QemuConfig::new("/nonexistent/kernel")
            .append("x".repeat(1024))
            .memory("3M");
        assert!(matches!(
            run(&at_limit),
            Err(RunnerError::KernelNotFound(_))
        ));
    }

    const MSR_STDERR: &str =
        "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000000000000b\n";

    #[test]
    fn kvm_host_is_retried_when_qemu_cannot_set_an_msr() {
        let kvm = QemuConfig::new("k").accel(Accel::Kvm);
        for outcome in [Outcome::QemuError, Outcome::Signalled] {
            let fallback = kvm_cpu_fallback(&kvm, outcome, MSR_STDERR);
            assert_eq!(
                fallback,
                Some(CpuFallback {
                    cpu: "host,-arch-capabilities".to_string(),
                    reason: "failed to set MSR 0x10a".to_string(),
                }),
                "{outcome}"
            );
        }
        let Some(fallback) = kvm_cpu_fallback(&kvm, Outcome::QemuError, MSR_STDERR) else {
            return;
        };
        assert_eq!(
            fallback.to_string(),
            "-cpu host failed on this KVM host (failed to set MSR 0x10a); \
             retrying with -cpu host,-arch-capabilities"
        );
        // Without an MSR number, the reason is QEMU's phrase alone.
        assert_eq!(
            kvm_cpu_fallback(&kvm, Outcome::QemuError, "failed to set MSR\n").map(|f| f.reason),
            Some("failed to set MSR".to_string())
        );
    }

    #[test]
    fn no_retry_unless_kvm_host_failed_on_an_msr() {
        let kvm = QemuConfig::new("k").accel(Accel::Kvm);
        let cases = [
            // Not KVM, or a CPU model chosen by hand (the retry's own among them).
            (
                QemuConfig::new("k").cpu("host"),
                Outcome::QemuError,
                MSR_STDERR,
            ),
            (kvm.clone().cpu("max"), Outcome::QemuError, MSR_STDERR),
            (
                kvm.clone().cpu(KVM_HOST_FALLBACK_CPU),
                Outcome::QemuError,
                MSR_STDERR,
            ),
            (kvm.clone().cpu("host,+pks"), Outcome::QemuError, MSR_STDERR),
            // QEMU did not fail, or failed for another reason.
            (kvm.clone(), Outcome::Success, MSR_STDERR),
            (kvm.clone(), Outcome::KernelFailure, MSR_STDERR),
            (
                kvm.clone(),
                Outcome::Timeout(Duration::from_secs(1)),
                MSR_STDERR,
            ),
            (
                kvm.clone(),
                Outcome::QemuError,
                "qemu-system-x86_64: failed to initialize kvm: Permission denied\n",
            ),
            (kvm.clone(), Outcome::QemuError, "failed to get MSR 0x10a\n"),
            (kvm.clone(), Outcome::QemuError, ""),
        ];
        for (cfg, outcome, stderr) in cases {
            assert_eq!(
                kvm_cpu_fallback(&cfg, outcome, stderr),
                None,
                "{:?} -cpu {} {outcome} {stderr:?}",
                cfg.accel,
                cfg.cpu
            );
        }
    }

    /// Serialises the tests that write and run a fake QEMU, so no test
    /// forks while another holds its script open for writing (which makes
    /// the exec fail with "text file busy").
    static FAKE_QEMU: Mutex<()> = Mutex::new(());

    /// A temp dir with a "kernel" (not an ELF: COM2 is then ignored) and a
    /// shell script standing in for QEMU.
    fn fake_qemu(script: &str) -> (TempDir, PathBuf, PathBuf) {
        let dir = match TempDir::new() {
            Ok(dir) => dir,
            Err(e) => panic!("temp dir: {e}"),
        };
        let kernel = dir.0.join("kernel");
        let qemu = dir.0.join("qemu");
        let written = fs::write(&kernel, b"not an ELF")
            .and_then(|()| fs::write(&qemu, format!("#!/bin/sh\n{script}")))
            .and_then(|()| fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)));
        if let Err(e) = written {
            panic!("writing the fake QEMU: {e}");
        }
        (dir, kernel, qemu)
    }

    /// Fails like a KVM host that refuses IA32_ARCH_CAPABILITIES, unless
    /// the CPU model drops it; then "boots" and exits with success.
    const MSR_FAILING_QEMU: &str = r#"
case " $* " in
  *" -cpu host,-arch-capabilities "*) echo "boot complete"; exit 33 ;;
esac
echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000000000000b" >&2
exit 1
"#;

    #[test]
    fn a_failing_kvm_host_run_is_retried_once() {
        let _serial = FAKE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
        let (_dir, kernel, qemu) = fake_qemu(MSR_FAILING_QEMU);
        let cfg = QemuConfig::new(&kernel).accel(Accel::Kvm);
        let report = match run_with_fallback(&qemu, &cfg) {
            Ok(report) => report,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(report.outcome, Outcome::Success, "{}", report.transcript());
        assert!(report.command.contains("-cpu host,-arch-capabilities"));
        assert_eq!(report.console, "boot complete\n");
        let note = "-cpu host failed on this KVM host (failed to set MSR 0x10a); \
                    retrying with -cpu host,-arch-capabilities";
        assert_eq!(report.notes.first().map(String::as_str), Some(note));
        assert_eq!(
            report.interleaved.first().map(String::as_str),
            Some(format!("{NOTE_PREFIX}{note}").as_str())
        );

        // Under TCG the same failure is QEMU's error, reported as it is.
        let tcg = QemuConfig::new(&kernel).cpu("host");
        let report = match run_with_fallback(&qemu, &tcg) {
            Ok(report) => report,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(report.outcome, Outcome::QemuError);
        assert!(report.qemu_stderr.contains("failed to set MSR 0x10a"));
        assert!(report.notes.iter().all(|n| !n.contains("retrying")));
    }

    #[test]
    fn a_retry_that_fails_too_is_reported_and_not_repeated() {
        let _serial = FAKE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
        // Fails whatever the CPU model, and counts its runs.
        let (dir, kernel, qemu) = fake_qemu(
            "echo run >> \"$(dirname \"$0\")/runs\"\n\
             echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x1' >&2\nexit 1\n",
        );
        let cfg = QemuConfig::new(&kernel).accel(Accel::Kvm);
        let report = match run_with_fallback(&qemu, &cfg) {
            Ok(report) => report,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(report.outcome, Outcome::QemuError);
        assert!(report.command.contains("-cpu host,-arch-capabilities"));
        assert!(report.notes.iter().any(|n| n.contains("retrying")));
        let runs = fs::read_to_string(dir.0.join("runs")).unwrap_or_default();
        assert_eq!(runs.lines().count(), 2, "one run and one retry");
    }

    #[test]
    fn collector_keeps_streams_apart_and_in_order() {
        let mut c = Collector::default();
        c.handle(Event::Console("boot".into(), Instant::now()));
        c.handle(Event::Log("[INFO ] a\nsecond".into()));
        c.handle(Event::Stderr("qemu warning".into()));
        c.handle(Event::Console("test x ... ok".into(), Instant::now()));
        c.handle(Event::Note("note".into()));
        assert_eq!(c.console, "boot\ntest x ... ok\n");
        assert_eq!(c.log, ["[INFO ] a\nsecond"]);
        assert_eq!(c.stderr, "qemu warning\n");
        assert_eq!(c.notes, ["note"]);
        assert_eq!(
            c.interleaved,
            [
                "boot",
                "  log| [INFO ] a\n  log| second",
                "test x ... ok",
                "runner| note"
            ]
        );
    }

    #[test]
    fn temp_dirs_are_unique_and_removed() {
        let a = TempDir::new().ok();
        let b = TempDir::new().ok();
        let (Some(a), Some(b)) = (a, b) else {
            panic!("cannot create temp dirs");
        };
        assert_ne!(a.0, b.0);
        let path = a.0.clone();
        assert!(path.is_dir());
        drop(a);
        assert!(!path.exists());
    }
}
