//! Running iproute2 and friends for the lab, with errors that say what failed.
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

pub fn run(prog: &str, args: &[&str]) -> Result<String> {
    run_with_input(prog, args, None)
}

/// As [`run`], with `input` on standard input.
pub fn run_with_input(prog: &str, args: &[&str], input: Option<&[u8]>) -> Result<String> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        std::io::Write::write_all(&mut stdin, bytes)
            .with_context(|| format!("writing to {prog}"))?;
    }
    let out: Output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `ip -n NS ...`
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// Runs a program inside a namespace.
pub fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    in_ns_with_input(ns, prog, args, None)
}

/// As [`in_ns`], with `input` on standard input.
pub fn in_ns_with_input(
    ns: &str,
    prog: &str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<String> {
    let mut a = vec!["netns", "exec", ns, prog];
    a.extend_from_slice(args);
    run_with_input("ip", &a, input)
}

pub fn netns_list() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}
