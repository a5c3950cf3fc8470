//! etcd access: connection (optionally TLS), network CRUD with validation,
//! listing into a [`Snapshot`], and the lease transactions of
//! [`crate::lease`]'s protocol. Every call carries a deadline, so a host cut
//! off from etcd sees errors within seconds instead of hanging.
//! [`EtcdSubnets`] is the agent's [`SubnetStore`](super::SubnetStore) on top.
mod subnets;

use std::{path::PathBuf, time::Duration};
pub use subnets::EtcdSubnets;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use ipnet::Ipv4Net;
use log::warn;

use super::{snapshot::BadEntry, Keys, Listing, Snapshot};
use crate::{
    lease::{candidates, SubnetLease},
    network::NetworkConfig,
};

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// CA certificate, client certificate and key (PEM) for TLS.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Deadline for each request.
    pub timeout: Duration,
}

/// Keys per page of a listing.
const LIST_PAGE: i64 = 500;

/// Whether a response was refused for its size (the client's message limit).
fn too_large(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| match c.downcast_ref::<etcd_client::Error>() {
            Some(etcd_client::Error::GRpcStatus(s)) => format!("{:?}", s.code()) == "OutOfRange",
            _ => false,
        })
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

pub struct EtcdStore {
    client: Client,
    pub keys: Keys,
    timeout: Duration,
}

async fn deadline<T>(
    what: &str,
    d: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r.with_context(|| format!("etcd {what}")),
        Err(_) => bail!("etcd {what}: no answer within {d:?}"),
    }
}

impl EtcdStore {
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.timeout)
            .with_timeout(cfg.timeout)
            // HTTP/2 pings find a dead connection (say, a firewall dropping
            // packets) within seconds; watches would otherwise hang forever.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader ends our streams instead of
            // keeping them open and silent: the session moves on.
            .with_require_leader(true);
        if let Some(ca) = &cfg.ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading CA {}", ca.display()))?;
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
            match (&cfg.cert, &cfg.key) {
                (Some(c), Some(k)) => {
                    let cert =
                        std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
                    let key =
                        std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => bail!("TLS client authentication needs both --etcd-cert and --etcd-key"),
            }
            opts = opts.with_tls(tls);
        }
        let client = deadline(
            "connect",
            cfg.timeout,
            Client::connect(cfg.endpoints.clone(), Some(opts)),
        )
        .await
        .with_context(|| format!("connecting to etcd at {}", cfg.endpoints.join(",")))?;
        Ok(Self {
            client,
            keys: Keys::new(&cfg.prefix),
            timeout: cfg.timeout,
        })
    }

    /// Every record under the prefix (keys outside the layout are ignored).
    pub async fn list(&mut self) -> Result<Listing> {
        let root = self.keys.root().into_bytes();
        let end = prefix_end(&root);
        let mut start = root;
        let mut revision = 0;
        let mut records = Vec::new();
        let mut page = LIST_PAGE;
        // Page by page at one revision: one response for the whole prefix
        // outgrows the client's 4 MB message limit (about 20,000 leases, or
        // a few big values), and the agent could then never list again. A
        // page still too big (big values) is asked for again, halved.
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = match deadline(
                "list",
                self.timeout,
                self.client.get(start.clone(), Some(opts)),
            )
            .await
            {
                Err(e) if page > 1 && too_large(&e) => {
                    page /= 2;
                    continue;
                }
                r => r?,
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            records.extend(resp.kvs().iter().filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                Some((
                    self.keys.parse(&key)?,
                    kv.value().to_vec(),
                    kv.create_revision(),
                ))
            }));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing { records, revision })
    }

    /// Everything under the prefix as a view; bad entries are returned, not
    /// fatal. With `prev`, last good values outlive bad ones.
    pub async fn snapshot(&mut self, prev: Option<&Snapshot>) -> Result<(Snapshot, Vec<BadEntry>)> {
        Ok(self.list().await?.snapshot(&self.keys, prev))
    }

    /// Validates against the existing networks, then creates the config only
    /// if no network of that name exists (atomically).
    pub async fn create_network(&mut self, cfg: &NetworkConfig) -> Result<()> {
        let (snap, _) = self.snapshot(None).await?;
        let existing: Vec<NetworkConfig> = snap.networks.values().cloned().collect();
        cfg.validate_against(&existing)?;
        let key = self.keys.config(&cfg.name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, serde_json::to_vec(cfg)?, None)]);
        let r = deadline("create network", self.timeout, self.client.txn(txn)).await?;
        if !r.succeeded() {
            bail!("a network named {} already exists", cfg.name);
        }
        Ok(())
    }

    /// Deletes a network that no host holds a lease in.
    pub async fn delete_network(&mut self, name: &str) -> Result<()> {
        let (snap, _) = self.snapshot(None).await?;
        if !snap.networks.contains_key(name) {
            bail!("no network named {name}");
        }
        if let Some(l) = snap.leases.get(name).filter(|l| !l.is_empty()) {
            let holders: Vec<String> = l.iter().map(|(s, v)| format!("{s} ({})", v.node)).collect();
            bail!(
                "network {name} still has {} live lease(s): {}; stop or move those hosts first",
                l.len(),
                holders.join(", ")
            );
        }
        // Atomically: only if no lease key was written since the listing
        // (a host joining right now would otherwise lose its network).
        let leases = self.keys.leases(name);
        let txn = Txn::new()
            .when([Compare::mod_revision(leases, CompareOp::Less, snap.revision + 1).with_prefix()])
            .and_then([TxnOp::delete(
                self.keys.network(name),
                Some(DeleteOptions::new().with_prefix()),
            )]);
        let r = deadline("delete network", self.timeout, self.client.txn(txn)).await?;
        if !r.succeeded() {
            bail!("network {name} got a new lease while being deleted; nothing was changed");
        }
        Ok(())
    }

    pub async fn grant(&mut self, ttl: i64) -> Result<i64> {
        Ok(deadline(
            "lease grant",
            self.timeout,
            self.client.lease_grant(ttl, None),
        )
        .await?
        .id())
    }

    /// Ends etcd lease `lease` now: every key bound to it goes at once.
    pub async fn revoke(&mut self, lease: i64) -> Result<()> {
        deadline(
            "lease revoke",
            self.timeout,
            self.client.lease_revoke(lease),
        )
        .await?;
        Ok(())
    }

    pub async fn keep_alive(
        &mut self,
        lease: i64,
    ) -> Result<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> {
        deadline(
            "lease keep-alive",
            self.timeout,
            self.client.lease_keep_alive(lease),
        )
        .await
    }

    /// Acquires a subnet of `net` for `me`, bound to etcd lease `lease`.
    /// Takes over this node's own live lease key if there is one (an agent
    /// restart), else tries free subnets with create-if-absent transactions.
    /// Returns the subnet and the store revision of the write.
    pub async fn acquire(
        &mut self,
        net: &NetworkConfig,
        me: &SubnetLease,
        lease: i64,
        snap: &Snapshot,
    ) -> Result<(Ipv4Net, i64)> {
        let value = serde_json::to_vec(me)?;
        let put = || Some(PutOptions::new().with_lease(lease));
        // Our own key, still alive from a previous run of this agent: move it
        // onto the new etcd lease without a moment of absence.
        if let Some(sn) = snap.held_by(&net.name, &me.node) {
            let key = self.keys.lease(&net.name, &sn);
            let cur = deadline("get", self.timeout, self.client.get(key.clone(), None)).await?;
            if let Some(kv) = cur.kvs().first() {
                let still_mine = serde_json::from_slice::<SubnetLease>(kv.value())
                    .map(|l| l.node == me.node)
                    .unwrap_or(false);
                if still_mine {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::put(key, value.clone(), put())]);
                    let r = deadline("take over lease", self.timeout, self.client.txn(txn)).await?;
                    if r.succeeded() {
                        self.remember(&net.name, &me.node, &sn).await?;
                        return Ok((sn, header_rev(r.header())));
                    }
                }
            }
        }
        let taken = snap
            .leases
            .get(&net.name)
            .map(|l| l.keys().copied().collect())
            .unwrap_or_default();
        let remembered = snap.remembered.get(&net.name).cloned().unwrap_or_default();
        let tries = candidates(net, &taken, &remembered, &me.node);
        if tries.is_empty() {
            bail!(
                "network {} is exhausted: all {} /{} subnets of {} are leased",
                net.name,
                net.capacity(),
                net.subnet_len,
                net.cidr
            );
        }
        for sn in tries {
            let key = self.keys.lease(&net.name, &sn);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value.clone(), put())]);
            let r = deadline("acquire", self.timeout, self.client.txn(txn)).await?;
            if r.succeeded() {
                self.remember(&net.name, &me.node, &sn).await?;
                return Ok((sn, header_rev(r.header())));
            }
            // Somebody got it first; the next candidate.
        }
        Err(anyhow!(
            "network {}: every free subnet was taken concurrently; will retry",
            net.name
        ))
    }

    /// Writes `me` back onto our own lease key after someone deleted it
    /// (`expect_mod: None`, only if it is still absent) or overwrote it
    /// (`Some(rev)`, only if nobody changed it since). Returns the write's
    /// revision, or `None` when the key moved on meanwhile.
    pub async fn reclaim(
        &mut self,
        net: &str,
        sn: &Ipv4Net,
        me: &SubnetLease,
        lease: i64,
        expect_mod: Option<i64>,
    ) -> Result<Option<i64>> {
        let key = self.keys.lease(net, sn);
        let cmp = match expect_mod {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
        };
        let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
            key,
            serde_json::to_vec(me)?,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let r = deadline("reclaim lease", self.timeout, self.client.txn(txn)).await?;
        Ok(r.succeeded().then(|| header_rev(r.header())))
    }

    async fn remember(&mut self, net: &str, node: &str, sn: &Ipv4Net) -> Result<()> {
        let key = self.keys.node(net, node);
        if let Err(e) = deadline(
            "put",
            self.timeout,
            self.client.put(key, sn.to_string(), None),
        )
        .await
        {
            // Only a hint for the next restart; the lease itself is in place.
            warn!("recording subnet {sn} for {node}: {e:#}");
        }
        Ok(())
    }

    /// Watches everything under the prefix from `revision` (inclusive).
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream> {
        // Progress notifications keep an idle agent's revision current
        // without reading anything.
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision)
            .with_progress_notify();
        deadline(
            "watch",
            self.timeout,
            self.client.watch(self.keys.root(), Some(opts)),
        )
        .await
    }

    /// A key's value with its create and mod revisions, if it exists.
    pub async fn get_raw(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64, i64)>> {
        let r = deadline("get", self.timeout, self.client.get(key, None)).await?;
        Ok(r.kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.create_revision(), kv.mod_revision())))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_prefix_end_follows_every_key_of_the_prefix() {
        assert_eq!(prefix_end(b"/netfab/networks/"), b"/netfab/networks0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
