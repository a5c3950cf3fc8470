//! Developer tasks: `cargo xtask setup | build-ebpf | build | test`.
//!
//! The eBPF crate must be built with Debian's rustc-web (it ships a prebuilt
//! `core` for bpfel-unknown-none; rustup's toolchains have no rust-src here) and
//! bpf-linker on LLVM 22. This file drives that toolchain explicitly instead of
//! aya-build, which would call `rustup run nightly ... -Z build-std`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const BPF_TARGET: &str = "bpfel-unknown-none";
/// Name of the object next to the agent binary, where the agent looks first.
const OBJECT_NAME: &str = "netfab.bpf.o";

#[derive(Parser)]
#[command(about = "netfab developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain and tools (apt packages, bpf-linker, etcd), idempotently.
    Setup,
    /// Build the eBPF object and place it next to the agent binaries.
    BuildEbpf,
    /// build-ebpf, then the user-space workspace.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build everything, then run the whole test suite (unit and privileged).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => build_ebpf().map(|_| ()),
        Cmd::Build { release } => build(release),
        Cmd::Test { args } => test(&args),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Where the workspace's binaries go: `CARGO_TARGET_DIR` if set (relative
/// to the workspace root when relative), else `<root>/target`. The eBPF
/// object must land next to the binaries wherever they are built, or the
/// agent finds none and falls back to kernel VXLAN.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("[xtask] {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn setup() -> Result<()> {
    run(Command::new("bash").arg(root().join("scripts/setup.sh")))
}

fn which(name: &str, path: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn build_ebpf() -> Result<PathBuf> {
    let missing_fix = "run `cargo xtask setup` (or scripts/setup.sh) to install it";
    if !Path::new(DEBIAN_RUSTC).exists() || !Path::new(DEBIAN_CARGO).exists() {
        bail!("Debian's rustc-web/cargo-web are not installed at /usr/bin: {missing_fix}");
    }
    if !Path::new(BPF_CORE_DIR).is_dir() {
        bail!("no prebuilt core for {BPF_TARGET} at {BPF_CORE_DIR} (package libstd-rust-web-dev-bpf): {missing_fix}");
    }
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    // Debian's toolchain first; bpf-linker lives in ~/.cargo/bin.
    let path = format!(
        "/usr/bin:/bin:/usr/sbin:/sbin:{home}/.cargo/bin:{}",
        env::var("PATH").unwrap_or_default()
    );
    if which("bpf-linker", &path).is_none() {
        bail!("bpf-linker not found: {missing_fix}");
    }
    let crate_dir = root().join("netfab-ebpf");
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&crate_dir)
        .args(["build", "--release"])
        .env("PATH", &path)
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf uses #![feature(asm_experimental_arch)].
        .env("RUSTC_BOOTSTRAP", "1");
    // Variables set by the outer (rustup) cargo would steer the inner build
    // back to rustup's compiler or the host target.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    run(&mut cmd)?;
    let built = crate_dir.join(format!("target/{BPF_TARGET}/release/netfab"));
    if !built.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            built.display()
        );
    }
    let mut placed = None;
    for profile in ["debug", "release"] {
        let dir = target_dir().join(profile);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dest = dir.join(OBJECT_NAME);
        std::fs::copy(&built, &dest).with_context(|| format!("copying to {}", dest.display()))?;
        placed.get_or_insert(dest);
    }
    let placed = placed.expect("two profiles were written");
    eprintln!("[xtask] eBPF object: {}", placed.display());
    Ok(placed)
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(release: bool) -> Result<()> {
    build_ebpf()?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["build", "--workspace", "--all-targets"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    build(false)?;
    // Privileged tests that cannot run record themselves here (libtest
    // would count them as passed); they are listed after the run.
    let skips = root().join("target/test-skips");
    let _ = std::fs::remove_dir_all(&skips);
    let result = run(cargo()
        .current_dir(root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("NETFAB_TEST_SKIPS", &skips)
        .args(args));
    let mut skipped: Vec<String> = std::fs::read_dir(&skips)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.trim().to_string())
        .collect();
    skipped.sort();
    if skipped.is_empty() {
        eprintln!("[xtask] no test skipped");
    } else {
        eprintln!(
            "[xtask] {} test(s) SKIPPED (counted as passed by libtest above):",
            skipped.len()
        );
        for s in &skipped {
            eprintln!("[xtask]   {s}");
        }
    }
    result
}
