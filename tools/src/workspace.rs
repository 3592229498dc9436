//! Where things are in the workspace, and building the kernel image and
//! the root task.
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

/// The root task's crate, a workspace of its own (see its Cargo.toml).
pub const ROOTTASK_DIR: &str = "kernel/roottask";
/// Where its builds go, under the workspace root: beside the kernel's,
/// whatever `CARGO_TARGET_DIR` says (the build passes `--target-dir`).
pub const ROOTTASK_TARGET_DIR: &str = "target/roottask";
/// The root task's binary name.
pub const ROOTTASK_BINARY: &str = "roottask";

/// The root task ELF that [`build_roottask`] (and `make run`) produces.
pub fn default_roottask_path(release: bool) -> PathBuf {
    workspace_root()
        .join(ROOTTASK_TARGET_DIR)
        .join(KERNEL_TARGET)
        .join(if release { "release" } else { "debug" })
        .join(ROOTTASK_BINARY)
}

/// The cargo arguments that build the root task, run in [`ROOTTASK_DIR`]
/// (whose `.cargo/config.toml` picks the target and its code model).
fn roottask_build_args(release: bool) -> Vec<String> {
    // ROOTTASK_TARGET_DIR, relative to ROOTTASK_DIR.
    let up = vec![".."; Path::new(ROOTTASK_DIR).components().count()].join("/");
    let target_dir = format!("{up}/{ROOTTASK_TARGET_DIR}");
    let mut args: Vec<String> = vec!["build".into(), "--target-dir".into(), target_dir];
    if release {
        args.push("--release".to_string());
    }
    args
}

/// Builds the root task with cargo in its own directory, printing the
/// command first, and returns the path of its ELF.
pub fn build_roottask(release: bool) -> Result<PathBuf, RunnerError> {
    let dir = workspace_root().join(ROOTTASK_DIR);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let args = roottask_build_args(release);
    let shown = format!("cargo {}", args.join(" "));
    eprintln!(
        "runner: building the root task: {shown} (in {})",
        dir.display()
    );
    // The build has its own target directory; an inherited one would
    // put the ELF elsewhere.
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| RunnerError::io(format!("running `{shown}`"), e))?;
    if !status.success() {
        return Err(RunnerError::RootTaskBuildFailed {
            command: shown,
            status: describe_exit(status),
        });
    }
    let elf = default_roottask_path(release);
    if !elf.is_file() {
        return Err(RunnerError::InitrdNotFound(elf));
    }
    Ok(elf)
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
    fn the_root_task_builds_beside_the_kernel() {
        assert!(
            workspace_root()
                .join(ROOTTASK_DIR)
                .join("Cargo.toml")
                .is_file()
        );
        assert!(
            default_roottask_path(true)
                .ends_with("target/roottask/x86_64-unknown-none/release/roottask")
        );
        // The relative --target-dir, from the crate's directory, is
        // ROOTTASK_TARGET_DIR from the root (the Makefile passes the same).
        assert_eq!(
            roottask_build_args(true),
            [
                "build",
                "--target-dir",
                "../../target/roottask",
                "--release"
            ]
        );
        assert_eq!(roottask_build_args(false).len(), 3);
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
