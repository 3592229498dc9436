//! Where things are in the workspace, and building the kernel image.
//!
//! Paths are derived from this crate's manifest directory at compile time
//! (`tools/..` is the workspace root), so nothing machine-specific is
//! written into the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::RunnerError;
use crate::error::describe_exit;

/// The bare-metal target the kernel is built for.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";
/// The cargo package (and binary) name of the kernel.
pub const KERNEL_PACKAGE: &str = "kernel";

/// The workspace root: the parent of the `tools` crate.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// Where `cargo build --package kernel --target x86_64-unknown-none` puts
/// the kernel ELF (`debug` or, with `release`, `release`). Honors
/// `CARGO_TARGET_DIR` the way cargo does.
pub fn default_kernel_path(release: bool) -> PathBuf {
    let root = workspace_root();
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        // A relative CARGO_TARGET_DIR is relative to where cargo runs, which
        // for build_kernel is the workspace root.
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    };
    target_dir
        .join(KERNEL_TARGET)
        .join(if release { "release" } else { "debug" })
        .join(KERNEL_PACKAGE)
}

/// The cargo command line that builds the kernel, as (program, args).
fn build_command(release: bool) -> (String, Vec<String>) {
    // Under `cargo run`/`cargo test`, CARGO names the cargo that started us.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut args: Vec<String> = [
        "build",
        "--package",
        KERNEL_PACKAGE,
        "--target",
        KERNEL_TARGET,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if release {
        args.push("--release".to_string());
    }
    (cargo, args)
}

/// Builds the kernel with cargo from the workspace root, printing the
/// command first, and returns the path of the ELF it produced.
pub fn build_kernel(release: bool) -> Result<PathBuf, RunnerError> {
    let root = workspace_root();
    let (cargo, args) = build_command(release);
    let shown = format!("cargo {}", args.join(" "));
    eprintln!(
        "runner: building the kernel: {shown} (in {})",
        root.display()
    );

    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(&root)
        .status()
        .map_err(|e| RunnerError::io(format!("running `{shown}`"), e))?;
    if !status.success() {
        return Err(RunnerError::KernelBuildFailed {
            command: shown,
            status: describe_exit(status),
        });
    }
    let kernel = default_kernel_path(release);
    if !kernel.is_file() {
        return Err(RunnerError::KernelNotFound(kernel));
    }
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_this_crate() {
        assert!(workspace_root().join("tools").join("Cargo.toml").is_file());
    }

    #[test]
    fn kernel_path_follows_cargo_layout() {
        // CARGO_TARGET_DIR may be set by whoever runs the tests; only check
        // the part below the target directory.
        let debug = default_kernel_path(false);
        assert!(
            debug.ends_with("x86_64-unknown-none/debug/kernel"),
            "{debug:?}"
        );
        let release = default_kernel_path(true);
        assert!(
            release.ends_with("x86_64-unknown-none/release/kernel"),
            "{release:?}"
        );
    }

    #[test]
    fn build_command_matches_the_contract() {
        let (_, args) = build_command(false);
        assert_eq!(
            args,
            [
                "build",
                "--package",
                "kernel",
                "--target",
                "x86_64-unknown-none"
            ]
        );
        let (_, args) = build_command(true);
        assert_eq!(args.last().map(String::as_str), Some("--release"));
    }
}
