//! `netfab-lab`: a simulated cluster in network namespaces on this machine,
//! and the benchmark. Drives the `netfab` and `netfab-cni` binaries found
//! next to it (or `NETFAB_BIN`, `NETFAB_CNI_BIN`).
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use netfab::dataplane::{kind::VxlanEncap, select::Choice};
use netfab_lab::{
    self as lab,
    topology::{Control, Topology},
};

#[derive(Parser)]
#[command(
    name = "netfab-lab",
    version,
    about = "netfab's lab (hosts in network namespaces, real etcd) and bench"
)]
struct Cli {
    #[command(subcommand)]
    cmd: LabCmd,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    run(Cli::parse().cmd)
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
    /// Networks (each with its own CIDR and VNI); containers alternate.
    #[arg(long, default_value_t = 1)]
    networks: u32,
    #[arg(long, value_enum, default_value_t = Control::Etcd)]
    control: Control,
    /// Lease TTL in seconds (etcd mode).
    #[arg(long, default_value_t = 10)]
    lease_ttl: u32,
    /// etcd over plain HTTP instead of TLS with client certificates (the
    /// default): any process that reaches etcd can then rewrite the fabric.
    #[arg(long)]
    etcd_plain: bool,
    /// Underlay L2 segments joined by a router; hosts alternate between them.
    #[arg(long, default_value_t = 1)]
    segments: u32,
    /// Every agent's --dataplane.
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    dataplane: Choice,
    /// Hosts (comma separated) whose agent runs without CAP_BPF/CAP_SYS_ADMIN.
    #[arg(long, value_delimiter = ',')]
    no_bpf_hosts: Vec<u32>,
    /// etcd members (3 makes a replicated cluster; agents get every member).
    #[arg(long, default_value_t = 1)]
    etcd_members: u32,
    /// Start an `etcd grpc-proxy` and give agents only the proxy: it
    /// coalesces their identical watches into one on the members.
    #[arg(long)]
    etcd_proxy: bool,
    /// How eBPF agents put VXLAN headers on: built in eBPF (`native`) or by
    /// the kernel's VXLAN device (`device`).
    #[arg(long, value_enum, default_value_t = VxlanEncap::Native)]
    vxlan_encap: VxlanEncap,
    /// Hosts (comma separated) whose eBPF agent uses the VXLAN device
    /// whatever --vxlan-encap says (a mixed cluster).
    #[arg(long, value_delimiter = ',')]
    device_encap_hosts: Vec<u32>,
    /// Direct routing between hosts on one segment.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    direct_routing: bool,
    /// Steer each container flow to one CPU (netfab-cni's `flowSteering`).
    #[arg(long)]
    flow_steering: bool,
    #[arg(long, env = "NETFAB_BPF_OBJECT")]
    bpf_object: Option<PathBuf>,
}

impl LabShape {
    fn topology(&self, min_hosts: u32) -> Result<Topology> {
        let mut t = Topology::with(
            &self.name.name,
            self.hosts.max(min_hosts),
            self.containers,
            self.networks,
            self.control,
        )?;
        t.lease_ttl = self.lease_ttl.max(2);
        t.etcd_tls = !self.etcd_plain;
        t.segments = self.segments.clamp(1, 8);
        t.dataplane = self.dataplane;
        t.no_bpf_hosts = self.no_bpf_hosts.clone();
        t.direct_routing = self.direct_routing;
        t.flow_steering = self.flow_steering;
        if !(1..=5).contains(&self.etcd_members) {
            anyhow::bail!("--etcd-members must be between 1 and 5");
        }
        t.etcd_members = self.etcd_members;
        t.etcd_proxy = self.etcd_proxy;
        t.vxlan_encap = self.vxlan_encap;
        t.device_encap_hosts = self.device_encap_hosts.clone();
        Ok(t)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchPart {
    Datapath,
    Scale,
    Fanout,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the namespaces, start etcd and one agent per host, wire containers.
    Up(LabShape),
    /// Remove the lab, always (agents, etcd, namespaces, pins).
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
    /// Measure every path side by side in one run: raw underlay, eBPF with
    /// VXLAN, eBPF direct, kernel VXLAN, host-gw (labs built and removed);
    /// and the control plane with thousands of simulated hosts.
    Bench {
        /// What to measure: `datapath` (iperf3 and request/response over
        /// every path), `scale` (one agent, N simulated hosts in etcd),
        /// `fanout` (what K agents' watches cost the etcd members, with
        /// and without an etcd grpc-proxy).
        #[arg(long, value_delimiter = ',', default_value = "datapath,scale,fanout")]
        what: Vec<BenchPart>,
        /// Simulated host counts for the scale bench.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        scale_hosts: Vec<u32>,
        /// How the scale bench's leases arrive: `burst` (as fast as etcd
        /// takes them, /24s, the agent's defaults) and `batches` (100 per
        /// transaction over 2 s, /26s, the lab's repair interval).
        #[arg(long, value_delimiter = ',', default_value = "burst,batches")]
        scale_patterns: Vec<lab::scale::Pattern>,
        /// Seconds the idle agent is watched at each scale size.
        #[arg(long, default_value_t = 60)]
        idle_secs: u32,
        /// Real agents (lab hosts) in the fan-out bench.
        #[arg(long, default_value_t = 8)]
        fanout_agents: u32,
        /// etcd members in the fan-out bench.
        #[arg(long, default_value_t = 3)]
        fanout_members: u32,
        /// Leases written, one by one, in the fan-out bench.
        #[arg(long, default_value_t = 100)]
        fanout_leases: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        secs: u32,
        /// Seconds per request/response run.
        #[arg(long, default_value_t = 3)]
        rr_secs: u32,
        /// Repetitions per path (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: u32,
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
        #[arg(long, env = "NETFAB_BPF_OBJECT")]
        bpf_object: Option<PathBuf>,
    },
    /// (bench helper) Serve TCP request/response transactions.
    #[command(hide = true)]
    RrServe {
        #[arg(long)]
        port: u16,
    },
    /// (bench helper) Run TCP request/response transactions; prints JSON.
    #[command(hide = true)]
    Rr {
        #[arg(long)]
        server: String,
        #[arg(long, default_value_t = 3)]
        secs: u32,
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

fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up(s) => lab::up(&s.topology(1)?, s.bpf_object.as_deref()).map(|_| ()),
        LabCmd::Down(n) => lab::down(&n.name),
        LabCmd::Demo { name, iperf_secs } => lab::demo::run(&lab::load(&name.name)?, iperf_secs),
        LabCmd::Run { shape, iperf_secs } => {
            let topo = shape.topology(1)?;
            let result = lab::up(&topo, shape.bpf_object.as_deref())
                .and_then(|t| lab::demo::run(&t, iperf_secs));
            let down = lab::down(&topo.name);
            result.and(down)
        }
        LabCmd::Bench {
            what,
            scale_hosts,
            scale_patterns,
            idle_secs,
            fanout_agents,
            fanout_members,
            fanout_leases,
            secs,
            rr_secs,
            reps,
            out,
            bpf_object,
        } => {
            if what.contains(&BenchPart::Datapath) {
                lab::bench::run(bpf_object.as_deref(), secs, rr_secs, reps, &out)?;
            }
            if what.contains(&BenchPart::Scale) {
                let idle = std::time::Duration::from_secs(idle_secs.into());
                lab::scale::run(
                    &scale_hosts,
                    &scale_patterns,
                    idle,
                    bpf_object.as_deref(),
                    &out,
                )?;
            }
            if what.contains(&BenchPart::Fanout) {
                lab::fanout::run(
                    fanout_agents,
                    fanout_members,
                    fanout_leases,
                    bpf_object.as_deref(),
                    &out,
                )?;
            }
            Ok(())
        }
        LabCmd::RrServe { port } => lab::rr::serve(port),
        LabCmd::Rr { server, secs } => {
            println!(
                "{}",
                serde_json::to_string(&lab::rr::client(&server, secs)?)?
            );
            Ok(())
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
