//! Link arguments for the bootable kernel image.
//!
//! Only the bare-metal target gets them: host builds of the workspace (check,
//! clippy) must not see the kernel's linker script.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=boot/kernel.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-none") {
        return;
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // The 32-bit stub uses absolute addresses, which a PIE link rejects.
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-T{manifest_dir}/boot/kernel.ld");
    // Without defmt's script the link succeeds but the log cannot be decoded.
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
}
