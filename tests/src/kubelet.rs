//! The kubelet's part, played for the hosts of a lab: a pod template read
//! from `deploy/` run from the unpacked image the way kubelet and a CRI
//! runtime (containerd with runc) run a non-privileged container: its own
//! mount and PID namespaces over a writable overlay of the image, /proc/sys
//! and /sys read-only, the manifest's command, args and env (downward API
//! and ConfigMap values filled in, `$(VAR)` expanded), hostPath and secret
//! volumes bind-mounted, and exactly the capabilities the securityContext
//! leaves. Probes are made from the node's network, as the kubelet's are.
//!
//! The lab's hosts share one machine's filesystem, so each node keeps its
//! own copy of the paths a node owns ([`NODE_PATHS`]), bind-mounted over
//! the real paths in every process that plays that node (the pod's
//! containers, the runtime calling CNI). /sys/fs/bpf and /run/xtables.lock
//! stay the machine's, shared as on one node (pins are per node name).
use std::{
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use netfab_lab::{self as lab, sh, topology::Topology};
use serde_json::Value;

use crate::{image::Image, wait_for};

/// Host paths each node has its own of.
pub const NODE_PATHS: &[&str] = &[
    "/run/netfab",
    "/var/lib/netfab",
    "/opt/cni/bin",
    "/etc/cni/net.d",
];

/// Linux capability names by number, as a securityContext spells them.
const CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// What containerd grants a container that drops nothing.
const RUNTIME_DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The capability set named by `names`, as a CapEff bit mask.
pub fn cap_mask(names: &[String]) -> u64 {
    names
        .iter()
        .map(|n| {
            let bit = CAPS
                .iter()
                .position(|c| c == n)
                .unwrap_or_else(|| panic!("unknown capability {n}"));
            1u64 << bit
        })
        .fold(0, |a, b| a | b)
}

/// setpriv's `--bounding-set` for exactly `caps`.
fn bounding_set(caps: &[String]) -> String {
    std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",")
}

/// Single-quoted for sh.
fn q(s: impl AsRef<OsStr>) -> String {
    format!("'{}'", s.as_ref().to_string_lossy().replace('\'', r"'\''"))
}

/// Mount points for [`NODE_PATHS`] on this machine: created where missing,
/// and those removed again on drop.
pub struct MountPoints {
    created: Vec<PathBuf>,
}

impl MountPoints {
    pub fn new() -> Self {
        let mut created = Vec::new();
        for p in NODE_PATHS {
            let mut missing: Vec<&Path> = Path::new(p)
                .ancestors()
                .take_while(|a| !a.exists())
                .collect();
            missing.reverse();
            for dir in missing {
                std::fs::create_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                created.push(dir.to_path_buf());
            }
        }
        Self { created }
    }
}

impl Default for MountPoints {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("removing mount point {}: {e}", dir.display());
            }
        }
    }
}

/// A lab host provisioned as a Kubernetes node.
pub struct Node {
    /// `spec.nodeName`.
    pub name: String,
    /// The host's network namespace (the pod network of a hostNetwork pod).
    pub ns: String,
    /// `status.hostIP`.
    pub ip: Ipv4Addr,
    paths: Vec<(&'static str, PathBuf)>,
    secrets: PathBuf,
    /// Containers' scratch directories.
    dir: PathBuf,
    /// Where the containers' logs go (kept by `lab down`).
    logs: PathBuf,
}

impl Node {
    /// Host `h` of `t` as a node: its own [`NODE_PATHS`] (the run directory
    /// is the lab's, so the lab's readers work), IP forwarding on (kubeadm's
    /// preflight requires it, and a non-privileged pod cannot set it), and
    /// the lab's etcd client certificate as the `netfab-etcd-tls` Secret.
    pub fn provision(t: &Topology, h: u32) -> Self {
        sh::in_ns(&t.host_ns(h), "sysctl", &["-qw", "net.ipv4.ip_forward=1"]).unwrap();
        let dir = lab::state_dir(&t.name).join(format!("node{h}"));
        let paths: Vec<(&'static str, PathBuf)> = NODE_PATHS
            .iter()
            .map(|p| match *p {
                "/run/netfab" => (*p, lab::host_dir(&t.name, h)),
                _ => (*p, dir.join(p.trim_start_matches('/'))),
            })
            .collect();
        for (_, real) in &paths {
            std::fs::create_dir_all(real).unwrap();
        }
        let secrets = dir.join("secrets");
        let tls = lab::tls::files(&lab::procs::tls_dir(t));
        let etcd = secrets.join("netfab-etcd-tls");
        std::fs::create_dir_all(&etcd).unwrap();
        for (from, to) in [
            (&tls.ca, "ca.crt"),
            (&tls.client_cert, "tls.crt"),
            (&tls.client_key, "tls.key"),
        ] {
            std::fs::copy(from, etcd.join(to)).unwrap();
        }
        Self {
            name: t.host_ns(h),
            ns: t.host_ns(h),
            ip: t.host_ip(h),
            paths,
            secrets,
            dir,
            logs: lab::state_dir(&t.name),
        }
    }

    /// Where the node's path `p` (one of [`NODE_PATHS`], or below one) is
    /// on this machine.
    pub fn path(&self, p: &str) -> PathBuf {
        self.paths
            .iter()
            .find_map(|(node, real)| {
                let rest = Path::new(p).strip_prefix(node).ok()?;
                Some(real.join(rest))
            })
            .unwrap_or_else(|| panic!("{p} is not a node path"))
    }

    /// `program` run as this node runs it: in the node's network namespace,
    /// with the node's own [`NODE_PATHS`]; `script` (sh) runs first, as
    /// PID 1 of a new PID namespace when `own_pids`.
    fn command_with(&self, own_pids: bool, script: &str, program: impl AsRef<OsStr>) -> Command {
        let mut s = String::from("set -e\n");
        for (node, real) in &self.paths {
            s += &format!("mount --bind {} {}\n", q(real), q(node));
        }
        s += script;
        s += "exec \"$@\"\n";
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).args([
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "slave",
        ]);
        if own_pids {
            c.args(["--pid", "--fork"]);
        }
        c.args(["--", "sh", "-c", &s, "sh"]).arg(program);
        c
    }

    /// `program` run on the node (say, the runtime calling CNI).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.command_with(false, "", program)
    }
}

/// Values the pod's env and args draw on: the ConfigMap and the pod's own.
pub struct PodInputs<'a> {
    pub node: &'a Node,
    pub image: &'a Image,
    /// The DaemonSet's `spec.template`.
    pub template: &'a Value,
    /// The ConfigMap the env refers to (as applied to the cluster).
    pub config_map: &'a Value,
}

/// One running container of a pod.
pub struct Container {
    pub name: String,
    child: Child,
    /// PID 1 of the container's PID namespace, as seen from here.
    pub pid: i32,
    pub log: PathBuf,
    grace: Duration,
    stopped: Option<ExitStatus>,
}

impl PodInputs<'_> {
    fn pod_spec(&self) -> &Value {
        &self.template["spec"]
    }

    fn pod_name(&self) -> String {
        let app = self.template["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap_or("pod");
        format!("{app}-{}", self.node.name)
    }

    /// The container's environment: the image's, then the manifest's.
    fn env(&self, c: &Value) -> Vec<(String, String)> {
        let mut env = self.image.env();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match f {
                    "spec.nodeName" => self.node.name.clone(),
                    // hostNetwork: the pod's IP is the node's.
                    "status.hostIP" | "status.podIP" => self.node.ip.to_string(),
                    "metadata.name" => self.pod_name(),
                    "metadata.namespace" => "netfab-system".into(),
                    other => panic!("fieldRef {other} is not played here"),
                }
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                assert_eq!(
                    r["name"], self.config_map["metadata"]["name"],
                    "env {name} refers to another ConfigMap"
                );
                self.config_map["data"][r["key"].as_str().unwrap()]
                    .as_str()
                    .unwrap_or_else(|| panic!("ConfigMap has no {}", r["key"]))
                    .to_string()
            } else {
                panic!("env {name}: {e} is not played here")
            };
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        env
    }

    /// The capabilities the container ends up with.
    fn capabilities(&self, c: &Value) -> Vec<String> {
        let sc = &c["securityContext"];
        assert!(
            sc["privileged"] != true && sc["runAsUser"].as_u64().unwrap_or(0) == 0,
            "only non-privileged root containers are played here"
        );
        let list = |k: &str| -> Vec<String> {
            sc["capabilities"][k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let drop = list("drop");
        let mut caps: Vec<String> = if drop.iter().any(|d| d == "ALL") {
            Vec::new()
        } else {
            RUNTIME_DEFAULT_CAPS
                .iter()
                .map(|c| c.to_string())
                .filter(|c| !drop.contains(c))
                .collect()
        };
        caps.extend(list("add"));
        caps.sort();
        caps.dedup();
        caps
    }

    /// Shell lines mounting the container's volumes under `$R`.
    fn volume_mounts(&self, c: &Value) -> String {
        let volumes = self.pod_spec()["volumes"].as_array().unwrap();
        let mut s = String::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap();
            let target = format!("\"$R\"{}", q(m["mountPath"].as_str().unwrap()));
            let v = volumes
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("no volume {name}"));
            if let Some(hp) = v["hostPath"].as_object() {
                let path = q(hp["path"].as_str().unwrap());
                match hp["type"].as_str().unwrap_or("") {
                    "DirectoryOrCreate" => s += &format!("mkdir -p {path}\n"),
                    "FileOrCreate" => s += &format!("[ -e {path} ] || : > {path}\n"),
                    "Directory" | "File" | "" => {}
                    t => panic!("hostPath type {t} is not played here"),
                }
                s += &format!(
                    "if [ -d {path} ]; then mkdir -p {target}; else mkdir -p \"$(dirname {target})\"; : > {target}; fi\n\
                     mount --rbind {path} {target}\n"
                );
            } else if let Some(secret) = v["secret"].as_object() {
                let dir = self
                    .node
                    .secrets
                    .join(secret["secretName"].as_str().unwrap());
                s += &format!("mkdir -p {target}\n");
                if dir.is_dir() {
                    s += &format!("mount --bind {} {target}\n", q(&dir));
                } else {
                    assert_eq!(secret["optional"], true, "secret {name} missing");
                    s += &format!("mount -t tmpfs tmpfs {target}\n");
                }
            } else {
                panic!("volume {v} is not played here");
            }
            match m["mountPropagation"].as_str() {
                Some("HostToContainer") => s += &format!("mount --make-rslave {target}\n"),
                None | Some("None") => s += &format!("mount --make-rprivate {target}\n"),
                Some(p) => panic!("mountPropagation {p} is not played here"),
            }
            if m["readOnly"] == true {
                s += &format!("mount -o remount,bind,ro {target}\n");
            }
        }
        s
    }

    /// Starts container `c` of the pod (init or main).
    fn start(&self, c: &Value) -> Container {
        let name = c["name"].as_str().unwrap().to_string();
        let env = self.env(c);
        let cfg = &self.image.runtime_config["process"];
        // command replaces the image's entrypoint, args its cmd.
        let argv: Vec<&Value> = match (c["command"].as_array(), c["args"].as_array()) {
            (Some(cmd), args) => cmd.iter().chain(args.into_iter().flatten()).collect(),
            (None, Some(_)) => panic!("args without command are not played here"),
            (None, None) => cfg["args"].as_array().unwrap().iter().collect(),
        };
        let argv: Vec<String> = argv
            .into_iter()
            .map(|v| expand(v.as_str().unwrap(), &env))
            .collect();
        assert!(
            c["workingDir"].is_null() && cfg["cwd"] == "/",
            "a working directory other than / is not played here"
        );
        let caps = self.capabilities(c);
        let bounding = bounding_set(&caps);
        let dir = self.node.dir.join(format!("container-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "C={dir}\n\
             # The writable layer lives and dies with the container's mounts.\n\
             mount -t tmpfs -o mode=755 tmpfs \"$C\"\n\
             mkdir \"$C/upper\" \"$C/work\" \"$C/root\"\n\
             mount -t overlay overlay -o lowerdir={image},upperdir=\"$C/upper\",workdir=\"$C/work\" \"$C/root\"\n\
             R=\"$C/root\"\n\
             mount -t proc -o nosuid,nodev,noexec proc \"$R/proc\"\n\
             mount --bind \"$R/proc/sys\" \"$R/proc/sys\"\n\
             mount -o remount,bind,ro \"$R/proc/sys\"\n\
             mount -t sysfs -o ro,nosuid,nodev,noexec sysfs \"$R/sys\"\n\
             mount -t tmpfs -o nosuid,mode=755 tmpfs \"$R/dev\"\n\
             for d in null zero full random urandom tty; do : > \"$R/dev/$d\"; mount --bind /dev/$d \"$R/dev/$d\"; done\n\
             {volumes}\
             set -- chroot \"$R\" setpriv --bounding-set={bounding} --inh-caps=-all {nnp} -- \"$@\"\n",
            dir = q(&dir),
            image = q(&self.image.rootfs),
            volumes = self.volume_mounts(c),
            nnp = if c["securityContext"]["allowPrivilegeEscalation"] == false {
                "--no-new-privs"
            } else {
                ""
            },
        );
        let log = self
            .node
            .logs
            .join(format!("pod-{}-{name}.log", self.node.name));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = self.node.command_with(true, &script, &argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let mut child = cmd.spawn().expect("starting the container");
        let parent = child.id();
        let pid: i32 = wait_for(
            &format!("container {name} to start"),
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            },
        );
        // Set up until the container's own program runs in place of the
        // setup shell (what a kubelet reports as started): only then are
        // its capabilities the container's.
        let program: String = Path::new(&argv[0])
            .file_name()
            .map(|f| f.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        wait_for(
            &format!("container {name} to run {program}"),
            Duration::from_secs(10),
            || {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                (comm.trim() == program || child.try_wait().ok().flatten().is_some()).then_some(())
            },
        );
        Container {
            name,
            child,
            pid,
            log,
            grace: Duration::from_secs(
                self.pod_spec()["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30),
            ),
            stopped: None,
        }
    }

    /// Runs the init containers to completion, in order, then starts the
    /// containers: a pod as the kubelet starts it.
    pub fn start_pod(&self) -> Vec<Container> {
        let spec = self.pod_spec();
        assert_eq!(
            spec["hostNetwork"], true,
            "only hostNetwork pods are played"
        );
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            let mut init = self.start(c);
            let status = init.wait(Duration::from_secs(60));
            assert!(
                status.success(),
                "init container {} failed ({status}):\n{}",
                init.name,
                init.logs()
            );
        }
        spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| self.start(c))
            .collect()
    }

    /// The capabilities the manifest leaves container `name`.
    pub fn capabilities_of(&self, name: &str) -> Vec<String> {
        let spec = self.pod_spec();
        let c = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["initContainers"].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"));
        self.capabilities(c)
    }
}

/// Kubernetes' `$(VAR)` expansion in command, args and env values: known
/// names are replaced, unknown ones kept, `$$` escapes.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out += &rest[..i];
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|a| a.split_once(')'))
            .filter(|(n, _)| env.iter().any(|(k, _)| k == n))
        {
            out += &env.iter().rev().find(|(k, _)| k == name).unwrap().1;
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out + rest
}

impl Container {
    /// What the container wrote.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the container to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.stopped = Some(s);
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {} still running after {timeout:?}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the container as the kubelet does: SIGTERM, then SIGKILL once
    /// the grace period is over. Returns how it ended and whether it ended
    /// within the grace period.
    pub fn stop(&mut self) -> (ExitStatus, bool) {
        if let Some(s) = self.stopped.or_else(|| self.child.try_wait().unwrap()) {
            self.stopped = Some(s);
            return (s, true);
        }
        // SAFETY: signalling a process this test started (still running:
        // its parent, which exits with it, has not).
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.stopped = Some(s);
                return (s, true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let s = self.child.wait().unwrap();
        self.stopped = Some(s);
        (s, false)
    }

    /// The effective capabilities of the container's process.
    pub fn effective_caps(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap();
        u64::from_str_radix(hex.trim(), 16).unwrap()
    }

    /// Zombies in the container's PID namespace (a PID 1 that does not reap).
    pub fn zombies(&self) -> usize {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let own = ns(&self.pid.to_string());
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()) && ns(p) == own)
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            })
            .count()
    }

    /// `kubectl exec`: `argv` run inside the container, with its
    /// capabilities.
    pub fn exec(&self, caps: &[String], argv: &[&str]) -> std::process::Output {
        let bounding = bounding_set(caps);
        let environ = std::fs::read(format!("/proc/{}/environ", self.pid)).unwrap();
        let env = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>();
        Command::new("nsenter")
            .arg(format!("--target={}", self.pid))
            .args(["--mount", "--net", "--pid", "--root", "--wd", "--"])
            .args(["setpriv", &format!("--bounding-set={bounding}")])
            .args(["--inh-caps=-all", "--no-new-privs", "--"])
            .args(argv)
            .env_clear()
            .envs(env)
            .output()
            .unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP probe of a container, as the manifest declares it.
pub struct Probe {
    pub path: String,
    pub port: u16,
    pub period: Duration,
    pub failure_threshold: u32,
}

impl Probe {
    /// `which` (`livenessProbe`, `readinessProbe`) of container `c`.
    pub fn of(c: &Value, which: &str) -> Self {
        let p = &c[which];
        let get = &p["httpGet"];
        assert!(
            get.is_object() && get["host"].is_null(),
            "{which}: only httpGet to the pod is played"
        );
        assert!(matches!(get["scheme"].as_str(), None | Some("HTTP")));
        let port = match &get["port"] {
            Value::Number(n) => n.as_u64().unwrap() as u16,
            Value::String(name) => c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no port named {name}"))
                as u16,
            other => panic!("port {other}"),
        };
        Self {
            path: get["path"].as_str().unwrap_or("/").to_string(),
            port,
            period: Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10)),
            failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3) as u32,
        }
    }

    /// One probe from the node: Ok(status) when it succeeds (2xx, 3xx),
    /// Err(why) when it fails.
    pub fn check(&self, node: &Node) -> Result<u16, String> {
        let addr = SocketAddr::from((node.ip, self.port));
        match crate::http::get(&node.ns, addr, &self.path) {
            Ok((code, _)) if (200..400).contains(&code) => Ok(code),
            Ok((code, body)) => Err(format!("{code}: {}", body.trim())),
            Err(e) => Err(e),
        }
    }
}

/// The DaemonSet's pod template and the ConfigMap, from `deploy/`.
pub fn manifests() -> (Value, Value) {
    let deploy = crate::manifests::deploy_dir();
    let ds = crate::manifests::load(&deploy.join("daemonset.yaml"));
    let cm = crate::manifests::load(&deploy.join("configmap.yaml"));
    (ds["spec"]["template"].clone(), cm)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_as_kubernetes_does() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x y".to_string()),
        ];
        assert_eq!(expand("--a=$(A) $(B)", &env), "--a=1 x y");
        assert_eq!(expand("$(MISSING) $$(A) $", &env), "$(MISSING) $(A) $");
        assert_eq!(expand("$(A", &env), "$(A");
    }
}
