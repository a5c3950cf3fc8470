//! CNI wire types: the network configuration on stdin, results and errors
//! on stdout, and version negotiation. Spec versions 0.4.0, 1.0.0, 1.1.0.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Well-known error codes of the CNI specification.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: CHECK found the attachment not as it should be.
    pub const CHECK_FAILED: u32 = 100;
    /// Plugin-specific: the host's subnet has no free address.
    pub const EXHAUSTED: u32 = 101;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn with_code(mut self, code: u32) -> Self {
        self.code = code;
        self
    }
    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
    pub fn to_json(&self, version: &str) -> Value {
        serde_json::json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

impl From<anyhow::Error> for CniError {
    fn from(e: anyhow::Error) -> Self {
        CniError::new(code::IO, "I/O failure").details(format!("{e:#}"))
    }
}

/// The plugin's network configuration (`type: netfab-cni`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The netfab network (as in `netfab network create`).
    #[serde(default = "default_network")]
    pub network: String,
    /// Where the local agent keeps leases.json, endpoints.json, status.json.
    #[serde(default = "default_run_dir")]
    pub run_dir: String,
    /// Where address allocations are kept (must survive reboots).
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments that are still valid.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Whether this attachment owns the container's default route. With
    /// several netfab interfaces in one container, exactly one should; the
    /// others get a route to their network's CIDR instead.
    #[serde(default = "yes")]
    pub default_route: bool,
    /// What the runtime passes for the capabilities netfab declares.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// Refuse (at ADD) a container whose bandwidth limits this host cannot
    /// enforce (a fallback dataplane), instead of running it unlimited.
    #[serde(default)]
    pub require_bandwidth_enforcement: bool,
    /// Steer each of the container's flows to one CPU as it arrives on the
    /// host (RPS on the host end of its veth): no reordering of a flow the
    /// container sends from two CPUs, at the cost of a cross-CPU hand-off
    /// per packet (see docs/dataplanes.md for both, measured).
    #[serde(default)]
    pub flow_steering: bool,
}

fn yes() -> bool {
    true
}

/// `runtimeConfig`: the `mac` and `bandwidth` capabilities.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// The container interface's MAC, chosen by the runtime.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub bandwidth: Option<crate::bandwidth::Bandwidth>,
}

fn default_network() -> String {
    "default".into()
}
fn default_run_dir() -> String {
    "/run/netfab".into()
}
fn default_data_dir() -> String {
    "/var/lib/netfab/ipam".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A directory path from the configuration: absolute, no `..` (a config
/// must not steer the plugin outside the directories it names).
fn valid_dir(p: &str) -> bool {
    let path = std::path::Path::new(p);
    path.is_absolute()
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// An interface name the kernel accepts: 1-15 bytes, not `.` or `..`, no
/// '/', ':' or whitespace.
pub fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl NetConf {
    /// Checks what the plugin turns into paths, before anything touches disk.
    pub fn validate(&self) -> Result<(), CniError> {
        if !crate::network::valid_name(&self.network) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network `{}` is not a netfab network name (1-32 lowercase letters, digits, '-')",
                    self.network
                ),
            ));
        }
        for (what, dir) in [("runDir", &self.run_dir), ("dataDir", &self.data_dir)] {
            if !valid_dir(dir) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("{what} `{dir}` must be an absolute path without `..`"),
                ));
            }
        }
        self.runtime_mac()?;
        if let Some(b) = &self.runtime_config.bandwidth {
            b.validate().map_err(|e| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("runtimeConfig.bandwidth: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// The MAC the runtime asked for (`runtimeConfig.mac`), if any: a
    /// unicast, non-zero address other than the gateway's.
    pub fn runtime_mac(&self) -> Result<Option<crate::addr::MacAddr>, CniError> {
        let Some(text) = &self.runtime_config.mac else {
            return Ok(None);
        };
        let bad = |why: &str| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("runtimeConfig.mac `{text}` {why}"),
            )
        };
        let mac: crate::addr::MacAddr = text.parse().map_err(|_| bad("is not a MAC address"))?;
        if mac.0[0] & 1 != 0 {
            return Err(bad("is a multicast address"));
        }
        if mac.0 == [0; 6] || mac == crate::addr::GATEWAY_MAC {
            return Err(bad("is reserved (all zeros, or the gateway's)"));
        }
        Ok(Some(mac))
    }

    /// The version to speak: `cniVersion`, which the runtime sets to the
    /// version it chose for the whole list (`cniVersions` only says what
    /// the list could be spoken in).
    pub fn negotiate(&self) -> Result<String, CniError> {
        SUPPORTED
            .contains(&self.cni_version.as_str())
            .then(|| self.cni_version.clone())
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("unsupported cniVersion {}", self.cni_version),
                )
                .details(format!("netfab-cni supports {}", SUPPORTED.join(", ")))
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Index of the container interface in `interfaces`.
    pub interface: usize,
    pub mtu: u32,
    /// Routed via the gateway (0.0.0.0/0, or the network's CIDR).
    pub route: Ipv4Net,
}

impl AddResult {
    /// The result JSON in the negotiated version, appended to a previous
    /// plugin's result when there is one.
    pub fn to_json(&self, version: &str, prev: Option<&Value>) -> Value {
        let mut interfaces: Vec<Value> = prev
            .and_then(|p| p["interfaces"].as_array().cloned())
            .unwrap_or_default();
        let base = interfaces.len();
        interfaces.extend(
            self.interfaces
                .iter()
                .map(|i| serde_json::to_value(i).expect("plain struct")),
        );
        let mut ips: Vec<Value> = prev
            .and_then(|p| p["ips"].as_array().cloned())
            .unwrap_or_default();
        let mut ip = serde_json::json!({
            "address": self.address.to_string(),
            "gateway": self.gateway.to_string(),
            "interface": base + self.interface,
        });
        if version == "0.4.0" {
            ip["version"] = "4".into();
        }
        ips.push(ip);
        let mut routes: Vec<Value> = prev
            .and_then(|p| p["routes"].as_array().cloned())
            .unwrap_or_default();
        routes.push(
            serde_json::json!({"dst": self.route.to_string(), "gw": self.gateway.to_string()}),
        );
        let mut out = serde_json::json!({
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": prev.map(|p| p["dns"].clone()).filter(|d| !d.is_null()).unwrap_or(serde_json::json!({})),
        });
        // CNI 1.1 results may carry the interface MTU.
        if version == "1.1.0" {
            if let Some(ifs) = out["interfaces"].as_array_mut() {
                if let Some(i) = ifs.get_mut(base + self.interface) {
                    i["mtu"] = self.mtu.into();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names_from_the_config_are_checked() {
        let conf = |network: &str, run: &str, data: &str| NetConf {
            cni_version: "1.0.0".into(),
            cni_versions: Vec::new(),
            name: "n".into(),
            kind: "netfab-cni".into(),
            network: network.into(),
            run_dir: run.into(),
            data_dir: data.into(),
            prev_result: None,
            valid_attachments: None,
            default_route: true,
            runtime_config: Default::default(),
            require_bandwidth_enforcement: false,
            flow_steering: false,
        };
        assert!(conf("default", "/run/netfab", "/var/lib/netfab/ipam")
            .validate()
            .is_ok());
        for bad in [
            conf("../../..", "/run/netfab", "/var/lib/x"),
            conf("Default", "/run/netfab", "/var/lib/x"),
            conf("default", "run/netfab", "/var/lib/x"),
            conf("default", "/run/../etc", "/var/lib/x"),
            conf("default", "/run/netfab", "/var/lib/../../tmp"),
        ] {
            assert_eq!(bad.validate().unwrap_err().code, code::INVALID_CONFIG);
        }
        assert!(valid_ifname("eth0"));
        for bad in ["", ".", "..", "a:b", "a b", "a/b", "sixteen-chars-xx"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }

    fn conf(j: &str) -> NetConf {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn speaks_the_version_the_runtime_chose() {
        // cniVersions says what the list could speak; the runtime's choice
        // is cniVersion.
        let c = conf(
            r#"{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0","9.9.9"],"name":"n","type":"netfab-cni"}"#,
        );
        assert_eq!(c.negotiate().unwrap(), "1.0.0");
        let c = conf(r#"{"cniVersion":"0.4.0","name":"n","type":"netfab-cni"}"#);
        assert_eq!(c.negotiate().unwrap(), "0.4.0");
        let c = conf(r#"{"cniVersion":"0.3.1","name":"n","type":"netfab-cni"}"#);
        assert_eq!(c.negotiate().unwrap_err().code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn runtime_macs_are_checked_and_default_route_is_on_by_default() {
        let conf = |mac: &str| -> NetConf {
            serde_json::from_value(serde_json::json!({
                "cniVersion": "1.0.0", "name": "n", "type": "netfab-cni",
                "runtimeConfig": {"mac": mac}
            }))
            .unwrap()
        };
        let c = conf("02:11:22:33:44:55");
        assert!(c.default_route);
        assert_eq!(
            c.runtime_mac().unwrap().unwrap().to_string(),
            "02:11:22:33:44:55"
        );
        for bad in [
            "nonsense",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "ee:ee:ee:ee:ee:ee",
        ] {
            let e = conf(bad).validate().unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
            assert!(e.msg.contains(bad), "{}", e.msg);
        }
    }

    #[test]
    fn result_appends_to_a_previous_result_and_follows_the_version() {
        let r = AddResult {
            interfaces: vec![
                Interface {
                    name: "nfabc".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    sandbox: None,
                    mtu: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:6e:0a:f4:01:02".into(),
                    sandbox: Some("/var/run/netns/x".into()),
                    mtu: None,
                },
            ],
            address: "10.244.1.2/24".parse().unwrap(),
            gateway: "10.244.1.1".parse().unwrap(),
            interface: 1,
            mtu: 1450,
            route: Default::default(),
        };
        let prev = serde_json::json!({"interfaces":[{"name":"lo0","mac":"00:00:00:00:00:00"}],"ips":[],"dns":{"nameservers":["1.1.1.1"]}});
        let j = r.to_json("1.1.0", Some(&prev));
        assert_eq!(j["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(j["ips"][0]["interface"], 2);
        assert_eq!(j["interfaces"][2]["mtu"], 1450);
        assert_eq!(j["dns"]["nameservers"][0], "1.1.1.1");
        assert!(j["ips"][0].get("version").is_none());
        let old = r.to_json("0.4.0", None);
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][1].get("mtu").is_none());
    }
}
