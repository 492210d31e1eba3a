//! Lays out the daemon's code for its memory: the functions listed in
//! `order/agentsd.order` (what a daemon runs in its usual life, collected
//! by `order/collect`) go first and together in the binary's `.text`, so the
//! pages the kernel maps around them hold little else. See `order/collect`.

use std::path::Path;
use std::process::Command;

fn main() {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("order/agentsd.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=AGENTSD_LINK_MAP");
    // `order/collect` asks for the linker's map: where each function went,
    // by its name, in the very build it profiles (a build with symbols
    // kept would be another build, with other names).
    if let Some(map) = std::env::var_os("AGENTSD_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={}", Path::new(&map).display());
    }
    if order.exists() && links_with_rust_lld() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // A listed function that no longer exists is skipped without a word.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether the binary is linked by the LLD that rustup's toolchain brings
/// (rustc's default linker on x86_64 Linux since 1.90), which takes an
/// ordering file; another linker (a distribution's rustc, a linker chosen in
/// RUSTFLAGS) links the binary in the compiler's order.
fn links_with_rust_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || flags.contains("link") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout);
    Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(&target)
        .join("bin/gcc-ld/ld.lld")
        .exists()
}
