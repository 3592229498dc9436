//! Link arguments for the root task: its linker script (a static image at
//! 0x400000, one PT_LOAD segment per kind of page) and no PIE.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=roottask.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-T{manifest_dir}/roottask.ld");
}
