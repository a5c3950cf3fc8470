//! The agent's HTTP endpoints, on one port of the host network:
//! `/healthz` (the loop turns; never fails because etcd is down),
//! `/readyz` (programmed at least once and, with etcd, connected and
//! holding a subnet) and `/metrics` (Prometheus text format). A few lines
//! of HTTP/1.1 on tokio: probes and scrapes need nothing more.
pub mod metrics;
pub mod observed;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use log::{info, warn};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use self::observed::Shared;
use crate::dataplane::ebpf::maps::BpfMaps;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Where the eBPF maps are pinned (counters and occupancy come from
    /// there; other dataplanes have none).
    pub pin_dir: PathBuf,
    /// `/healthz` fails once the loop has not turned for this long.
    pub stale_after: Duration,
}

/// Binds now (so a port in use fails the agent at start, loudly) and
/// serves in the background.
pub async fn start(cfg: ServeConfig, observed: Shared) -> Result<()> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {} for health and metrics", cfg.listen))?;
    info!("serving /healthz, /readyz and /metrics on {}", cfg.listen);
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (cfg, observed) = (cfg.clone(), observed.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(conn, &cfg, &observed).await {
                    warn!("http: {e:#}");
                }
            });
        }
    });
    Ok(())
}

/// (status, content type, body) for a request path.
pub fn respond(path: &str, cfg: &ServeConfig, observed: &Shared) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let o = observed.lock().expect("observed state poisoned").clone();
    let verdict = |r: Result<(), String>| match r {
        Ok(()) => (200, TEXT, "ok\n".to_string()),
        Err(why) => (503, TEXT, format!("{why}\n")),
    };
    match path {
        "/healthz" => verdict(o.live(cfg.stale_after)),
        "/readyz" => verdict(o.ready()),
        "/metrics" => {
            let ebpf = o.status.as_ref().is_some_and(|s| s.dataplane == "ebpf");
            let maps = ebpf.then(|| BpfMaps::open(&cfg.pin_dir).ok()).flatten();
            let counters = maps.as_ref().and_then(|m| m.counters().ok());
            let occupancy = maps
                .as_ref()
                .and_then(|m| m.read().ok())
                .map(|t| metrics::occupancy(&t))
                .unwrap_or_default();
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&o, counters.as_ref(), &occupancy),
            )
        }
        _ => (
            404,
            TEXT,
            "not found: try /healthz, /readyz, /metrics\n".into(),
        ),
    }
}

async fn handle(mut conn: TcpStream, cfg: &ServeConfig, observed: &Shared) -> Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request head only; a slow or endless client is cut off.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    let (code, kind, body) = if method == "GET" || method == "HEAD" {
        respond(path, cfg, observed)
    } else {
        (405, "text/plain", "only GET\n".into())
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await.ok();
    Ok(())
}
