//! What securing the control plane costs: setting a client connection up to a
//! coordinator on loopback (TCP connect, then the cluster secret's
//! challenge–response, then TLS with mutual authentication under it) and one
//! request answered on an open connection (`ListJobs`), for a plain connection,
//! one with the secret, and one with the secret inside TLS. The secret's
//! handshake is paid once per connection; after it, frames travel as before (the
//! per-request figures of `plain` and `secret` are the same code path), while TLS
//! encrypts every frame.

#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use shardflow_engine::cluster::{ClusterClient, ClusterSecret, CoordinatorServer, Security, ServerOptions, TlsConfig};
use shardflow_engine::{CoordinatorConfig, JobCatalog};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A test CA and one certificate for 127.0.0.1, valid as server and client.
fn tls() -> TlsConfig {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut node = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = node.signed_by(&key, &ca).unwrap();
    TlsConfig::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes(), ca.pem().as_bytes()).unwrap()
}

fn coordinator(security: Security) -> (CoordinatorServer, SocketAddr) {
    let options = ServerOptions { security, ..ServerOptions::default() };
    let server = CoordinatorServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        CoordinatorConfig::default(),
        JobCatalog::new(),
        options,
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    (server, addr)
}

fn control_connect(c: &mut Criterion) {
    let secret = ClusterSecret::new(b"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a").unwrap();
    let kinds = [
        ("plain", Security::none()),
        ("secret", Security::none().with_secret(secret.clone())),
        ("secret_tls", Security::none().with_secret(secret).with_tls(tls())),
    ];
    let mut g = c.benchmark_group("control_connect");
    for (name, security) in kinds {
        let (server, addr) = coordinator(security.clone());
        g.bench_function(format!("{name}_connect_and_list"), |b| {
            b.iter(|| {
                let mut client = ClusterClient::connect_with(addr, TIMEOUT, &security).unwrap();
                client.list().unwrap()
            })
        });
        let mut client = ClusterClient::connect_with(addr, TIMEOUT, &security).unwrap();
        g.bench_function(format!("{name}_list_on_open_connection"), |b| b.iter(|| client.list().unwrap()));
        drop(client);
        server.shutdown();
    }
    g.finish();
}

criterion_group!(benches, control_connect);
criterion_main!(benches);
