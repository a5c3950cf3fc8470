//! Resources over a long run: an agent applying ten times a second while
//! containers come and go must not grow (fds, memory), and running out of
//! file descriptors must never cost it its pinned links.
use std::time::{Duration, Instant};

use netfab_lab::{self as lab, cni, sh, topology::Topology};
use netfab_tests::{guards::LabGuard, require_privileges, traffic::Pinger, wait_for};

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn applies(t: &Topology, h: u32) -> u64 {
    lab::read_status(t, h).map_or(0, |s| s.applies)
}

fn link_pins(t: &Topology, h: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(t.pin_dir(h).join("links"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sets the agent's soft open-file limit with prlimit(2), keeping the hard one.
fn set_nofile(pid: i32, n: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on a PID this test's lab started; the pointers are to
    // locals that outlive the calls.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit {
        rlim_cur: n.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_thousand_applies_and_250_container_cycles_leave_fds_and_memory_flat() {
    require_privileges!();
    let mut topo = Topology::new("soak", 2, 1).unwrap();
    topo.resync_ms = 100;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let pid = lab::agent_pid(&t.name, 1).expect("agent 1 runs");
    wait_for("a warmed-up agent", Duration::from_secs(20), || {
        (applies(t, 1) >= 30).then_some(())
    });
    let (fd0, rss0, n0) = (fd_count(pid), rss_kib(pid), applies(t, 1));
    eprintln!("soak start: {fd0} fds, {rss0} KiB RSS, {n0} applies");

    // Container churn on host 1 while the agent applies every 100 ms.
    let start = Instant::now();
    let ns = t.container_ns(1, 2);
    let mut cycles = 0;
    while cycles < 250 || applies(t, 1) < n0 + 1000 {
        sh::ip(&["netns", "add", &ns]).unwrap();
        cni::add(t, 1, 2).unwrap_or_else(|e| panic!("ADD in cycle {cycles}: {e:#}"));
        cni::del(t, 1, 2).unwrap_or_else(|e| panic!("DEL in cycle {cycles}: {e:#}"));
        sh::ip(&["netns", "del", &ns]).unwrap();
        cycles += 1;
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "soak took too long"
        );
    }
    // Let the last DEL be applied, then measure.
    let n1 = applies(t, 1);
    wait_for("a few more applies", Duration::from_secs(10), || {
        (applies(t, 1) >= n1 + 20).then_some(())
    });
    let (fd1, rss1, n2) = (fd_count(pid), rss_kib(pid), applies(t, 1));
    eprintln!(
        "soak end after {:?}: {cycles} ADD/DEL cycles, {} applies; fds {fd0} -> {fd1}, \
         RSS {rss0} -> {rss1} KiB",
        start.elapsed(),
        n2 - n0
    );
    assert!(n2 - n0 >= 1000, "only {} applies", n2 - n0);
    assert!(fd1 <= fd0 + 4, "fds grew from {fd0} to {fd1}");
    assert!(
        rss1 <= rss0 + 4096,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
}

#[test]
fn running_out_of_file_descriptors_keeps_every_pin_and_traffic() {
    require_privileges!();
    let mut topo = Topology::new("emfile", 2, 1).unwrap();
    topo.resync_ms = 100;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let pid = lab::agent_pid(&t.name, 1).expect("agent 1 runs");
    let pins = link_pins(t, 1);
    assert!(pins.len() >= 3, "container, overlay, underlay: {pins:?}");
    let pinger = Pinger::start(
        &t.container_ns(2, 1),
        &t.container_ip(1, 1).to_string(),
        600,
    );
    // No room for any new fd, whatever the agent closes meanwhile: every
    // apply now fails to open its pins (EMFILE). (A limit of "what is open
    // now" left room as soon as the agent closed a transient fd, and an ADD
    // then succeeded: a verdict that hung on timing.)
    let log_before = lab::agent_log(t, 1).len();
    assert!(fd_count(pid) > 3);
    set_nofile(pid, 3);
    wait_for("EMFILE in the agent's log", Duration::from_secs(10), || {
        lab::agent_log(t, 1)[log_before..]
            .contains("Too many open files")
            .then_some(())
    });
    // Two seconds of failing applies (20 at 100 ms): no pin may go.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(link_pins(t, 1), pins, "a pin was removed under EMFILE");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ADD cannot succeed while the agent cannot program: "try again
    // later" (11), and nothing is left behind.
    let ns = t.container_ns(1, 2);
    sh::ip(&["netns", "add", &ns]).unwrap();
    let err = format!(
        "{:#}",
        cni::add(t, 1, 2).expect_err("ADD while the agent has no fds")
    );
    assert!(err.contains("\"code\":11"), "{err}");
    let ipam = lab::host_dir(&t.name, 1).join("ipam/default");
    let allocated = std::fs::read_dir(&ipam).map(|d| d.count()).unwrap_or(0);
    assert_eq!(allocated, 1, "only container 1's address stays allocated");
    set_nofile(pid, 1024);
    // Recovered: a new container is programmed and answers at once.
    let ip = cni::add(t, 1, 2).expect("ADD after recovery");
    let st = netfab_lab::demo::ping(&t.container_ns(2, 1), &ip.to_string(), 3, "0.05").unwrap();
    assert_eq!(st.received, 3, "new container reachable after EMFILE");
    let st = pinger.finish();
    eprintln!(
        "EMFILE: {}/{} replies while the agent had no fds; pins kept: {}",
        st.received,
        st.sent,
        pins.len()
    );
    assert_eq!(
        st.received, st.sent,
        "traffic lost while the agent had no fds"
    );
}
