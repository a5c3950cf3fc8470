//! A privileged test that cannot run is reported as skipped, with its name
//! and the reason, and fails under CI: never a silent pass.
use std::process::Command;

use netfab_tests::require_privileges;

/// Runs normally; the test below runs it again in a child with a skip forced.
#[test]
fn probe_privileged() {
    require_privileges!();
}

fn child(ci: Option<&str>, skips: &std::path::Path) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().expect("own test binary"));
    cmd.args(["--exact", "probe_privileged", "--nocapture"])
        .env("NETFAB_TEST_FORCE_SKIP", "forced by the skip test")
        .env("NETFAB_TEST_SKIPS", skips)
        .env_remove("CI");
    if let Some(v) = ci {
        cmd.env("CI", v);
    }
    cmd.output().expect("running the test binary")
}

#[test]
fn a_test_that_cannot_run_is_recorded_as_skipped_and_fails_on_ci() {
    if std::env::var_os("NETFAB_TEST_FORCE_SKIP").is_some() {
        return;
    }
    let skips = std::env::temp_dir().join(format!("netfab-skips-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&skips);

    let out = child(None, &skips);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "off CI a skip does not fail: {err}");
    assert!(
        err.contains("SKIPPED skips") && err.contains("forced by the skip test"),
        "the skip is printed with its name and reason: {err}"
    );
    let recorded: Vec<String> = std::fs::read_dir(&skips)
        .expect("the skip was recorded")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(
        recorded[0].contains("probe_privileged") || recorded[0].starts_with("skips"),
        "{recorded:?}"
    );
    assert!(recorded[0].contains("forced by the skip test"));

    let out = child(Some("true"), &skips);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "under CI a skip fails: {text}");
    assert!(text.contains("cannot run on CI"), "{text}");
    let _ = std::fs::remove_dir_all(&skips);
}
