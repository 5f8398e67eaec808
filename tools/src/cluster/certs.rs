//! `shardflow make-certs`: a test CA and one certificate signed by it, for a
//! cluster's TLS with mutual authentication. The certificate allows both server
//! and client use (every process presents the same kind of certificate) and
//! names the hosts given, so clients can check the coordinator's address.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::Exit;

/// `shardflow make-certs`.
#[derive(Debug, Args)]
pub(crate) struct MakeCertsArgs {
    /// Directory to write `ca.pem`, `node.pem` and `node.key` into (created if
    /// missing; the CA's own key is not kept, so no one can sign more).
    #[arg(long)]
    dir: PathBuf,
    /// Names and addresses the certificate is valid for (comma-separated): every
    /// address a coordinator is reached at. Default `127.0.0.1,localhost`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    hosts: Vec<String>,
    /// The CA's name, in its subject. Default `shardflow test CA`.
    #[arg(long, default_value = "shardflow test CA")]
    ca_name: String,
    /// Replace the files of an earlier run (processes still holding its
    /// certificates are then refused by those given the new ones).
    #[arg(long)]
    force: bool,
}

/// The files `make-certs` writes into its directory.
const FILES: [&str; 3] = ["ca.pem", "node.pem", "node.key"];

fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let mut f = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn make_certs(a: &MakeCertsArgs) -> Result<Exit> {
    if !a.force {
        if let Some(there) = FILES.iter().map(|f| a.dir.join(f)).find(|p| p.exists()) {
            anyhow::bail!(
                "{} exists already: a new CA would refuse every process holding the old one's certificates \
                 (pass --force to replace the files anyway)",
                there.display()
            );
        }
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, a.ca_name.as_str());
    ca.distinguished_name = dn;
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut node = CertificateParams::new(a.hosts.clone()).context("a host that is neither an address nor a name")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "shardflow node");
    node.distinguished_name = dn;
    node.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = node.signed_by(&key, &ca)?;

    let [ca_file, node_file, key_file] = FILES.map(|f| a.dir.join(f));
    write(&ca_file, &ca.pem(), false)?;
    write(&node_file, &cert.pem(), false)?;
    write(&key_file, &key.serialize_pem(), true)?;
    println!("wrote {0}/ca.pem, {0}/node.pem and {0}/node.key (for {1})", a.dir.display(), a.hosts.join(", "));
    Ok(Exit::Done)
}
