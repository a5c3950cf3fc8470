//! The `netfab` binary: agent and CLI. Each subcommand lives in
//! `commands/`. (The lab and bench are `netfab-lab`, their own crate.)
mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};

use commands::{agent::AgentArgs, network::NetworkCmd, EtcdArgs, HostArgs};

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
    Agent(Box<AgentArgs>),
    /// Cluster networks stored in etcd.
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Network namespace to reach etcd from.
        #[arg(long, global = true)]
        netns: Option<String>,
    },
    /// What the agent runs: dataplane and why, and per peer the path taken.
    Status {
        /// The agent's run directory.
        #[arg(long, env = "NETFAB_RUN_DIR", default_value = netfab::rundir::DEFAULT)]
        run_dir: std::path::PathBuf,
        /// Override [default: <run-dir>/status.json].
        #[arg(long)]
        status_file: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Container address allocations: find and free leaks.
    Ipam {
        #[command(subcommand)]
        cmd: commands::ipam::IpamCmd,
        /// Network namespace of the host to act in.
        #[arg(long, global = true)]
        netns: Option<String>,
    },
    /// Remove everything the dataplane created on this host.
    Cleanup(HostArgs),
    /// Install netfab-cni into the CNI bin dir (atomically); with
    /// --wait-ready-secs also the conflist, once the local agent is ready.
    InstallCni(commands::install::InstallArgs),
    /// Show the datapath's packet, byte and drop counters.
    Stats {
        #[command(flatten)]
        host: HostArgs,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().cmd {
        Cmd::Agent(a) => commands::agent::run(*a),
        Cmd::Network { cmd, etcd, netns } => commands::network::run(cmd, etcd, netns),
        Cmd::Status {
            run_dir,
            status_file,
            json,
        } => commands::agent::show_status(run_dir, status_file, json),
        Cmd::Ipam { cmd, netns } => commands::ipam::run(cmd, netns),
        Cmd::Cleanup(h) => commands::agent::cleanup(h),
        Cmd::InstallCni(a) => commands::install::run(a),
        Cmd::Stats { host, json } => commands::agent::show_stats(host, json),
    }
}
