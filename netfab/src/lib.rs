//! netfab: per-host container subnets routed by eBPF over a VXLAN fabric.
//!
//! The agent is one loop; each arrow is a module, in the order data flows:
//!
//! ```text
//! store (SubnetStore: etcd | memory) -> LeaseEvent -> store::Snapshot (last
//!     good values) -> agent::judge (each entry on its own) -> agent::desired
//!     (+ agent::grace, agent::own) = agent::fabric, a Source
//! state file = agent::statefile, the other Source
//!     -> DesiredState -> dataplane::{ebpf, vxlan, hostgw} (ebpf: tables ->
//!        reconcile -> maps, attach) -> kernel -> ApplyReport
//!     -> agent::status -> rundir (status.json) -> netfab status, CNI ADD
//! ```
//!
//! - [`store`]: the seam to the cluster store ([`store::SubnetStore`], typed
//!   [`store::LeaseEvent`]s), the cached view ([`store::Snapshot`]), etcd.
//! - [`agent`]: the one loop ([`agent::run`]) and its sources; judging,
//!   desired state, grace for vanished peers, our own lease records, status.
//! - [`state`]: the desired state of one host and its validation.
//! - [`dataplane`]: backends behind one trait, [`dataplane::kind`] names
//!   them; [`dataplane::ebpf`] loads the TC programs, pins maps and links;
//!   [`dataplane::iptables`] holds the host firewall every backend shares.
//! - [`reconcile`]: desired vs. actual, as data.
//! - [`rundir`]: the agent <-> CNI contract: paths, the versioned file types
//!   (endpoints, leases, status), the agent lock, atomic writes, and how
//!   each side learns at once that the other wrote.
//! - [`cni`], [`ipam`], [`bandwidth`]: the plugin, its address records and
//!   the containers' bandwidth limits.
//! - [`stats`]: counters from the pinned maps; [`serve`]: the agent's
//!   `/healthz`, `/readyz` and `/metrics`.
//! - [`netlink`], [`netns`], [`addr`], [`network`], [`lease`], [`caps`]:
//!   plumbing and the cluster's value types.
//!
//! The lab and the bench are a crate of their own (`netfab-lab`) that
//! drives this one through its binaries and files.
pub mod addr;
pub mod agent;
pub mod bandwidth;
pub mod caps;
pub mod cni;
pub mod compat;
pub mod dataplane;
pub mod ipam;
pub mod lease;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod reconcile;
pub mod rundir;
pub mod serve;
pub mod state;
pub mod stats;
pub mod store;
