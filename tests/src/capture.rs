//! tcpdump inside a namespace, started and confirmed listening before the
//! test sends anything; stopped on drop.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    /// Captures up to `count` packets matching `filter` on `iface` in `ns`.
    pub fn start(ns: &str, iface: &str, filter: &str, count: u32) -> Self {
        let file = std::env::temp_dir().join(format!("netfab-{ns}-{}.pcap", std::process::id()));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-i",
                iface,
                "-nn",
                "-U",
                "-c",
                &count.to_string(),
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump (is it installed?)");
        // tcpdump says "listening on IFACE" once the capture is armed.
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break,
                Some(Ok(_)) => continue,
                other => panic!("tcpdump did not start: {other:?}"),
            }
        }
        // Drain the rest so tcpdump never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, file }
    }

    /// Waits for tcpdump to have captured its count, then returns the file.
    pub fn finish(mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().expect("polling tcpdump").is_none() {
            assert!(
                Instant::now() < deadline,
                "capture did not see enough packets within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read(&self.file).expect("reading capture")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}
