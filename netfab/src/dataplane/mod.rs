//! Dataplane backends. Each takes a [`DesiredState`](crate::state::DesiredState)
//! and makes the kernel match it; `ebpf` is the TC datapath. The fallback
//! backends (kernel VXLAN, host-gw) implement the same trait.
pub mod cleanup;
pub mod ebpf;
pub mod host;
pub mod hostgw;
pub mod iptables;
pub mod select;
pub mod vxlan;

use crate::state::DesiredState;

/// What one `apply` changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub map_upserts: usize,
    pub map_removals: usize,
    pub attached: usize,
    /// Desired items that could not be programmed yet (for example a container
    /// veth that does not exist), with the reason.
    pub skipped: Vec<String>,
    /// Desired items this backend refuses (for example a host-gw peer on
    /// another L2 segment), with the reason.
    pub refused: Vec<String>,
    /// Local containers that are programmed (their veth exists).
    pub programmed_endpoints: Vec<std::net::Ipv4Addr>,
}

#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// Makes the kernel match `state`. Idempotent; safe to call periodically.
    async fn apply(&mut self, state: &DesiredState) -> anyhow::Result<ApplyReport>;
    /// The backend's name as `netfab status` reports it.
    fn name(&self) -> &'static str;
}
