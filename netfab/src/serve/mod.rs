//! The agent's HTTP endpoints, on one port of the host network:
//! `/healthz` (the loop turns; never fails because etcd is down),
//! `/readyz` (programmed at least once and, with etcd, connected and
//! holding a subnet) and `/metrics` (Prometheus text format). A few lines
//! of HTTP/1.1 on tokio: probes and scrapes need nothing more.
pub mod metrics;
pub mod observed;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

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

/// Requests admitted per second, sustained, and the burst above it.
/// Prometheus scrapes once per interval and kubelets probe every few
/// seconds: this is far above both, and it bounds what a flood costs.
pub const ADMIT_PER_SEC: u32 = 100;
const ADMIT_BURST: u32 = 20;
/// Connections served at once; the rest wait in the listen backlog.
const MAX_IN_FLIGHT: usize = 16;
/// A `/metrics` body is rendered at most this often and shared by every
/// request meanwhile (a render reads every pinned map).
const METRICS_MAX_AGE: Duration = Duration::from_secs(1);

/// Binds now (so a port in use fails the agent at start, loudly) and
/// serves on a thread of its own, with its own runtime: whatever clients
/// do, the agent's loop (and the CNI ADDs waiting on it) keep their core.
/// The work per client is bounded: requests are admitted at
/// [`ADMIT_PER_SEC`], at most [`MAX_IN_FLIGHT`] at a time, and `/metrics`
/// is rendered at most once per [`METRICS_MAX_AGE`].
pub async fn start(cfg: ServeConfig, observed: Shared) -> Result<()> {
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("listening on {} for health and metrics", cfg.listen))?;
    listener.set_nonblocking(true)?;
    info!("serving /healthz, /readyz and /metrics on {}", cfg.listen);
    std::thread::Builder::new()
        .name("netfab-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return warn!("http: no runtime: {e}"),
            };
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, cfg, observed).await,
                    Err(e) => warn!("http: {e}"),
                }
            })
        })
        .context("starting the HTTP thread")?;
    Ok(())
}

async fn serve(listener: TcpListener, cfg: ServeConfig, observed: Shared) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let cache = std::sync::Arc::new(std::sync::Mutex::new(MetricsCache::default()));
    let mut admit = Admission::new(ADMIT_PER_SEC, ADMIT_BURST);
    loop {
        // Wait for a token and a slot before accepting: what is not
        // admitted waits in the kernel's backlog and costs us nothing.
        tokio::time::sleep(admit.wait(Instant::now())).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let (cfg, observed, cache) = (cfg.clone(), observed.clone(), cache.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(conn, &cfg, &observed, &cache).await {
                log::debug!("http: {e:#}");
            }
            drop(slot);
        });
    }
}

/// A token bucket for admitted requests. Pure: the caller gives the time.
#[derive(Debug)]
pub struct Admission {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Admission {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: per_sec as f64,
            burst: burst as f64,
            tokens: burst as f64,
            at: None,
        }
    }

    /// Takes a token; returns how long to wait before using it.
    pub fn wait(&mut self, now: Instant) -> Duration {
        let earned = self.at.map_or(0.0, |at| {
            now.saturating_duration_since(at).as_secs_f64() * self.per_sec
        });
        self.tokens = (self.tokens + earned).min(self.burst) - 1.0;
        self.at = Some(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

/// The last `/metrics` body and when it was rendered.
#[derive(Default)]
struct MetricsCache {
    body: Option<(Instant, std::sync::Arc<String>)>,
}

fn metrics_body(cfg: &ServeConfig, observed: &Shared) -> String {
    let o = observed.lock().expect("observed state poisoned").clone();
    let ebpf = o.status.as_ref().is_some_and(|s| s.dataplane == "ebpf");
    let maps = ebpf.then(|| BpfMaps::open(&cfg.pin_dir).ok()).flatten();
    let counters = maps.as_ref().and_then(|m| m.counters().ok());
    let occupancy = maps
        .as_ref()
        .and_then(|m| m.read().ok())
        .map(|t| metrics::occupancy(&t))
        .unwrap_or_default();
    metrics::render(&o, counters.as_ref(), &occupancy)
}

/// (status, content type, body) for a request path.
fn respond(
    path: &str,
    cfg: &ServeConfig,
    observed: &Shared,
    cache: &std::sync::Mutex<MetricsCache>,
) -> (u16, &'static str, std::sync::Arc<String>) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let verdict = |r: Result<(), String>| match r {
        Ok(()) => (200, TEXT, std::sync::Arc::new("ok\n".to_string())),
        Err(why) => (503, TEXT, std::sync::Arc::new(format!("{why}\n"))),
    };
    match path {
        // Judged under the lock, without copying the report.
        "/healthz" => verdict(
            observed
                .lock()
                .expect("observed state poisoned")
                .live(cfg.stale_after),
        ),
        "/readyz" => verdict(observed.lock().expect("observed state poisoned").ready()),
        "/metrics" => {
            let mut c = cache.lock().expect("metrics cache poisoned");
            let body = match &c.body {
                Some((at, body)) if at.elapsed() < METRICS_MAX_AGE => body.clone(),
                _ => {
                    let body = std::sync::Arc::new(metrics_body(cfg, observed));
                    c.body = Some((Instant::now(), body.clone()));
                    body
                }
            };
            (200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        _ => (
            404,
            TEXT,
            std::sync::Arc::new("not found: try /healthz, /readyz, /metrics\n".into()),
        ),
    }
}

async fn handle(
    mut conn: TcpStream,
    cfg: &ServeConfig,
    observed: &Shared,
    cache: &std::sync::Mutex<MetricsCache>,
) -> Result<()> {
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
        respond(path, cfg, observed, cache)
    } else {
        (405, "text/plain", std::sync::Arc::new("only GET\n".into()))
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A client that does not read its answer is cut off too.
    tokio::time::timeout(Duration::from_secs(5), async {
        conn.write_all(head.as_bytes()).await?;
        if method != "HEAD" {
            conn.write_all(body.as_bytes()).await?;
        }
        conn.shutdown().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("client too slow to read its answer"))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_holds_the_rate_after_its_burst() {
        let t0 = Instant::now();
        let mut a = Admission::new(100, 20);
        // The burst goes at once, then one request per 10 ms.
        for _ in 0..20 {
            assert_eq!(a.wait(t0), Duration::ZERO);
        }
        let w = a.wait(t0);
        assert!((w.as_secs_f64() - 0.01).abs() < 1e-6, "{w:?}");
        let w = a.wait(t0);
        assert!((w.as_secs_f64() - 0.02).abs() < 1e-6, "{w:?}");
        // A second later the debt is paid and the bucket has refilled
        // (capped at its burst).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(a.wait(t1), Duration::ZERO);
        let t5 = t0 + Duration::from_secs(5);
        for _ in 0..20 {
            assert_eq!(a.wait(t5), Duration::ZERO);
        }
        assert!(a.wait(t5) > Duration::ZERO);
    }
}
