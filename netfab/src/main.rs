use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use netfab::{
    agent::{self, AgentConfig},
    dataplane::ebpf::{self, object, DEFAULT_PIN_ROOT},
    lab::{self, topology::Topology},
    netns,
    state::DEFAULT_VXLAN_DEVICE,
    stats,
};

#[derive(Parser)]
#[command(
    name = "netfab",
    version,
    about = "eBPF-accelerated container routing fabric"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the host agent: keep the dataplane equal to the desired state.
    Agent(AgentArgs),
    /// Remove everything the dataplane created on this host.
    Cleanup(HostArgs),
    /// Show the datapath's packet, byte and drop counters.
    Stats {
        #[command(flatten)]
        host: HostArgs,
        #[arg(long)]
        json: bool,
    },
    /// A simulated cluster in network namespaces on this machine.
    #[command(subcommand)]
    Lab(LabCmd),
}

#[derive(Args, Clone)]
struct HostArgs {
    /// Network namespace (as in `ip netns`) to act in.
    #[arg(long)]
    netns: Option<String>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/netfab/<netns or hostname>]
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_VXLAN_DEVICE)]
    vxlan_device: String,
}

#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Desired state as JSON (the etcd-less mode).
    #[arg(long)]
    state_file: PathBuf,
    /// The compiled eBPF object [default: netfab.bpf.o next to this binary].
    #[arg(long, env = "NETFAB_BPF_OBJECT")]
    bpf_object: Option<PathBuf>,
    /// Seconds between full resyncs that repair drift.
    #[arg(long, default_value_t = 10)]
    resync_secs: u64,
}

#[derive(Args, Clone)]
struct LabName {
    #[arg(long, default_value = "nf")]
    name: String,
}

#[derive(Args)]
struct LabShape {
    #[command(flatten)]
    name: LabName,
    #[arg(long, default_value_t = 2)]
    hosts: u32,
    #[arg(long, default_value_t = 2)]
    containers: u32,
    #[arg(long, env = "NETFAB_BPF_OBJECT")]
    bpf_object: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the namespaces, wire containers, start one agent per host.
    Up(LabShape),
    /// Remove the lab, always (agents, namespaces, pins).
    Down(LabName),
    /// Ping between all containers and run iperf3 across hosts.
    Demo {
        #[command(flatten)]
        name: LabName,
        #[arg(long, default_value_t = 5)]
        iperf_secs: u32,
    },
    /// up, demo, down: the main job.
    Run {
        #[command(flatten)]
        shape: LabShape,
        #[arg(long, default_value_t = 5)]
        iperf_secs: u32,
    },
    /// Compare netfab's eBPF path with kernel VXLAN and the raw underlay, in
    /// one run on a fresh lab (built and removed by this command).
    Bench {
        #[command(flatten)]
        shape: LabShape,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        secs: u32,
        /// Repetitions per path (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: u32,
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
    },
    /// Stop one host's agent and start it again.
    RestartAgent {
        #[command(flatten)]
        name: LabName,
        #[arg(long)]
        host: u32,
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        hard: bool,
        #[arg(long, env = "NETFAB_BPF_OBJECT")]
        bpf_object: Option<PathBuf>,
    },
}

fn default_pin_dir(h: &HostArgs) -> PathBuf {
    if let Some(p) = &h.pin_dir {
        return p.clone();
    }
    let node = h.netns.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "local".into())
    });
    PathBuf::from(DEFAULT_PIN_ROOT).join(node)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Agent(a) => {
            // Before any thread exists: setns changes only the calling thread.
            if let Some(ns) = &a.host.netns {
                netns::enter(ns)?;
            }
            let cfg = AgentConfig {
                state_file: a.state_file,
                pin_dir: default_pin_dir(&a.host),
                bpf_object: object::locate(a.bpf_object.as_deref())?,
                resync: Duration::from_secs(a.resync_secs.max(1)),
                poll: Duration::from_millis(200),
            };
            runtime()?.block_on(agent::run(cfg, shutdown_signal()))
        }
        Cmd::Cleanup(h) => {
            if let Some(ns) = &h.netns {
                netns::enter(ns)?;
            }
            let dir = default_pin_dir(&h);
            runtime()?.block_on(ebpf::cleanup(&dir, &h.vxlan_device))
        }
        Cmd::Stats { host, json } => {
            let c = stats::read(&default_pin_dir(&host))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", stats::render(&c));
            }
            Ok(())
        }
        Cmd::Lab(cmd) => run_lab(cmd),
    }
}

fn run_lab(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up(s) => {
            let topo = Topology::new(&s.name.name, s.hosts, s.containers)?;
            lab::up(&topo, s.bpf_object.as_deref())
        }
        LabCmd::Down(n) => lab::down(&n.name),
        LabCmd::Demo { name, iperf_secs } => lab::demo::run(&lab::load(&name.name)?, iperf_secs),
        LabCmd::Run { shape, iperf_secs } => {
            let topo = Topology::new(&shape.name.name, shape.hosts, shape.containers)?;
            let result = lab::up(&topo, shape.bpf_object.as_deref())
                .and_then(|()| lab::demo::run(&topo, iperf_secs));
            let down = lab::down(&topo.name);
            result.and(down)
        }
        LabCmd::Bench {
            shape,
            secs,
            reps,
            out,
        } => {
            let topo = Topology::new(&shape.name.name, shape.hosts.max(2), shape.containers)?;
            let result = lab::up(&topo, shape.bpf_object.as_deref())
                .and_then(|()| lab::bench::run(&topo, secs, reps, &out).map(|_| ()));
            let down = lab::down(&topo.name);
            result.and(down)
        }
        LabCmd::RestartAgent {
            name,
            host,
            hard,
            bpf_object,
        } => {
            let topo = lab::load(&name.name)?;
            lab::stop_agent(&topo.name, host, hard)?;
            lab::start_agent(&topo, host, bpf_object.as_deref())?;
            Ok(())
        }
    }
}
