//! `netfab cleanup`: remove everything any backend created on this host,
//! keep going past errors and report all of them.
use std::path::Path;

use anyhow::{anyhow, Result};

use super::vxlan::DEVICE_PREFIX;
use crate::netlink::Netlink;

pub async fn cleanup(pin_dir: &Path, vxlan_device: &str) -> Result<()> {
    let mut errors = Vec::new();
    // Pinned links and maps: removing the pins detaches the programs once
    // no agent holds them.
    if pin_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(pin_dir) {
            errors.push(format!("removing {}: {e}", pin_dir.display()));
        }
    }
    match Netlink::connect() {
        Ok(nl) => {
            let mut devices = vec![vxlan_device.to_string()];
            if let Ok(links) = nl.links().await {
                devices.extend(links.into_keys().filter(|n| n.starts_with(DEVICE_PREFIX)));
            }
            for d in devices {
                if let Err(e) = nl.delete(&d).await {
                    errors.push(format!("{e:#}"));
                }
            }
            if let Err(e) = nl.set_gateways(&Default::default()).await {
                errors.push(format!("{e:#}"));
            }
            match nl.our_routes().await {
                Ok(routes) => {
                    for r in routes {
                        // Routes through a deleted device went with it.
                        let _ = nl.route_del(&r).await;
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    errors.extend(super::iptables::remove_all());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("cleanup incomplete: {}", errors.join("; ")))
    }
}
