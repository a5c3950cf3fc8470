//! netfab: per-host container subnets routed by eBPF over a VXLAN fabric.
//!
//! The agent is a pipeline; each arrow is a module, in the order data flows:
//!
//! ```text
//! etcd -> store (Snapshot: last good values) -> control::judge (each entry
//!     on its own) -> control::desired (+ retained peers) -> state
//!     -> dataplane::{ebpf, vxlan, hostgw} (ebpf: tables -> reconcile -> maps,
//!        attach) -> kernel -> ApplyReport -> control::status -> status.json
//! state file (etcd-less mode) -> state -> the same dataplanes -> status.json
//! ```
//!
//! - [`store`]: etcd key layout, the cached view (`Snapshot`), the client.
//! - [`control`]: the etcd-mode agent: leases, ownership of our own keys,
//!   judging entries ([`control::judge`]), desired state, status.
//! - [`agent`]: the state-file-mode loop.
//! - [`state`]: the desired state of one host and its validation.
//! - [`dataplane`]: backends behind one trait, [`dataplane::kind`] names
//!   them; [`dataplane::ebpf`] loads the TC programs, pins maps and links;
//!   [`dataplane::iptables`] holds the host firewall every backend shares.
//! - [`reconcile`]: desired vs. actual, as data.
//! - [`rundir`]: the files the agent and the CNI plugin share, and how each
//!   learns at once that the other wrote.
//! - [`cni`], [`ipam`], [`endpoints`]: the plugin and its records.
//! - [`stats`]: counters from the pinned maps.
//! - [`lab`]: a simulated cluster in network namespaces (tests and bench).
pub mod addr;
pub mod agent;
pub mod cni;
pub mod dataplane;
pub mod endpoints;
pub mod ipam;
pub mod lab;
pub mod lease;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod reconcile;
pub mod rundir;
pub mod state;
pub mod stats;
pub mod store;
