//! A throw-away PKI for the lab's etcd with TLS: a CA, a server certificate
//! for etcd's addresses (also valid as a client certificate: etcd 3.4's
//! internal gateway dials itself with it), one client certificate, and one
//! for a grpc-proxy to reach the members with (etcd requires that one's
//! Common Name be empty).
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::sh::run;

/// openssl req arguments for a fresh P-256 key without a passphrase.
const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
}

pub fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
        proxy_cert: dir.join("proxy.pem"),
        proxy_key: dir.join("proxy-key.pem"),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// `openssl req` making a fresh key, with `extra` arguments.
fn new_key_request(extra: &[&str]) -> Result<()> {
    let mut args = vec!["req"];
    args.extend_from_slice(&NEW_EC_KEY);
    args.extend_from_slice(extra);
    run("openssl", &args).map(|_| ())
}

/// A CA, a server certificate for every address in `server_ips` (and
/// 127.0.0.1), and a client certificate.
pub fn generate(dir: &Path, server_ips: &[std::net::Ipv4Addr]) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let f = files(dir);
    let ca_key = dir.join("ca-key.pem");
    new_key_request(&[
        "-x509",
        "-keyout",
        s(&ca_key),
        "-out",
        s(&f.ca),
        "-days",
        "2",
        "-subj",
        "/CN=netfab-lab-ca",
    ])?;
    // `stem` names the request files; `subj` is the certificate's subject.
    let sign = |stem: &str, subj: &str, cert: &Path, key: &Path, ext: &str| -> Result<()> {
        let csr = dir.join(format!("{stem}.csr"));
        let extfile = dir.join(format!("{stem}.ext"));
        std::fs::write(&extfile, ext)?;
        new_key_request(&["-keyout", s(key), "-out", s(&csr), "-subj", subj])?;
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                s(&csr),
                "-CA",
                s(&f.ca),
                "-CAkey",
                s(&ca_key),
                "-CAcreateserial",
                "-out",
                s(cert),
                "-days",
                "2",
                "-extfile",
                s(&extfile),
            ],
        )?;
        Ok(())
    };
    sign(
        "etcd",
        "/CN=etcd",
        &f.server_cert,
        &f.server_key,
        &format!(
            "subjectAltName={}IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            server_ips
                .iter()
                .map(|ip| format!("IP:{ip},"))
                .collect::<String>()
        ),
    )?;
    sign(
        "netfab",
        "/CN=netfab",
        &f.client_cert,
        &f.client_key,
        "extendedKeyUsage=clientAuth\n",
    )?;
    sign(
        "proxy",
        "/O=netfab-lab/OU=etcd-grpc-proxy",
        &f.proxy_cert,
        &f.proxy_key,
        "extendedKeyUsage=clientAuth\n",
    )?;
    Ok(f)
}
