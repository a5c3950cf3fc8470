//! netfab: per-host container subnets routed by eBPF over a VXLAN fabric.
//!
//! The agent is a pipeline; each arrow is a module:
//!
//! ```text
//! state file (etcd later) -> state -> dataplane::ebpf::tables (pure)
//!     -> reconcile (pure diff) -> dataplane::ebpf::{maps, attach} -> kernel
//! ```
//!
//! - [`state`]: the desired state of one host and its validation.
//! - [`reconcile`]: desired vs. actual, as data.
//! - [`dataplane`]: backends; [`dataplane::ebpf`] loads the TC programs, pins
//!   maps and links, and creates the VXLAN device through [`netlink`].
//! - [`agent`]: the loop that keeps the kernel equal to the desired state.
//! - [`stats`]: counters from the pinned maps.
//! - [`lab`]: a simulated cluster in network namespaces.
pub mod addr;
pub mod agent;
pub mod cni;
pub mod control;
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
