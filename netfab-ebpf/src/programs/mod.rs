//! One module per attach point, as Cilium keeps `bpf_lxc.c` and
//! `bpf_overlay.c`: each holds the logic of its program.
pub mod from_container;
pub mod from_host;
pub mod from_overlay;
pub mod from_underlay;
