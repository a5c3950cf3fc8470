//! A plain HTTP/1.1 GET from inside a namespace, as a kubelet probe or a
//! Prometheus scrape from that network would make it.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::guards::in_netns;

/// (status code, body); Err when nothing answers.
pub fn get(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not HTTP: {resp:.80}"))?;
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        Ok((code, body.to_string()))
    })
}
