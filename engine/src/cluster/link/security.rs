//! What a control connection proves before any frame reaches a state machine:
//! the cluster's secret (an HMAC challenge–response, the secret never on the
//! wire) and, optionally, TLS with mutual authentication (rustls; both ends
//! present a certificate of the cluster's CA).
//!
//! ```text
//!  client (worker, CLI)                          coordinator
//!   TCP connect ────────────────────────────────► accept (a thread of its own)
//!   [TLS handshake, both certificates checked against the cluster CA]
//!   AuthHello { client nonce } ─────────────────►
//!   ◄───────────── AuthChallenge { server nonce, HMAC(secret, "server" ‖ nc ‖ ns) }
//!   checks the coordinator's proof
//!   AuthResponse { HMAC(secret, "client" ‖ ns ‖ nc) } ─►  checks the client's proof
//!   ◄──────────────────────────────────────────── AuthAccepted
//!   frames …                                      frames reach the coordinator
//! ```
//!
//! Both proofs are keyed by the secret over both fresh nonces with distinct
//! labels, so neither can be replayed or reflected, and each side learns that the
//! other holds the secret. A peer that fails is refused with an `ErrorReply`
//! (`Unauthenticated`) and logged with its address; nothing it sent reaches a
//! state machine. Without a secret, no frames are exchanged before the first
//! request (today's behaviour); a coordinator that has one refuses a client that
//! has none, and the other way round, each saying so.
//!
//! The engine takes the secret and certificates as bytes; reading them from
//! files is the tools' job.

use std::sync::Arc;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::EngineError;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// A cluster's shared secret, kept only as an HMAC key.
#[derive(Clone)]
pub struct ClusterSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(…)")
    }
}

impl ClusterSecret {
    /// A secret from its bytes (say, a file's contents; surrounding whitespace is
    /// not part of it). At least [`MIN_SECRET_BYTES`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, EngineError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(EngineError::InvalidConfig {
                field: "secret",
                value: format!("{} bytes", trimmed.len()),
                reason: format!(
                    "a cluster secret needs at least {MIN_SECRET_BYTES} bytes (make one with `openssl rand -hex 32`)"
                ),
            });
        }
        Ok(ClusterSecret { key: hmac::Key::new(hmac::HMAC_SHA256, trimmed) })
    }

    /// The proof of `label` over `first ‖ second`.
    pub(crate) fn prove(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label);
        ctx.update(first);
        ctx.update(second);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `proof` is the proof of `label` over `first ‖ second` (compared in
    /// constant time).
    pub(crate) fn verify(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32], proof: &[u8; 32]) -> bool {
        let mut msg = Vec::with_capacity(label.len() + 64);
        msg.extend_from_slice(label);
        msg.extend_from_slice(first);
        msg.extend_from_slice(second);
        hmac::verify(&self.key, &msg, proof).is_ok()
    }
}

/// A fresh random nonce, or `None` when the system's random source fails (the
/// handshake then refuses to go on: a predictable nonce would let a recorded
/// proof be replayed).
pub(crate) fn nonce() -> Option<[u8; 32]> {
    let mut n = [0u8; 32];
    SystemRandom::new().fill(&mut n).ok()?;
    Some(n)
}

/// TLS settings of a process: its certificate chain and key, and the cluster's
/// CA, which every peer's certificate must chain to (mutual authentication).
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig(…)")
    }
}

fn tls_error(what: &str, reason: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidConfig { field: "tls", value: what.to_string(), reason: reason.to_string() }
}

impl TlsConfig {
    /// From PEM bytes: this process's certificate chain (leaf first), its
    /// private key, and the CA certificate(s) peers must chain to. The same
    /// certificate serves as server (coordinator) and client (worker, CLI)
    /// certificate, so it must allow both uses; its subject alternative names
    /// must include the addresses clients connect to.
    pub fn from_pem(cert_chain: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, EngineError> {
        // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
        // exchange (X25519MLKEM768, which only its aws-lc-rs provider has, at the
        // price of a C and cmake build); ring's classical suites are what this
        // build offers, so the deprecation is acknowledged here.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error("tls_cert", format!("not PEM certificates: {e}")))?;
        if chain.is_empty() {
            return Err(tls_error("tls_cert", "no certificate in it"));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| tls_error("tls_key", format!("no PEM private key: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error("tls_ca", format!("not PEM certificates: {e}")))?;
        if cas.is_empty() {
            return Err(tls_error("tls_ca", "no certificate in it"));
        }
        for c in cas {
            roots.add(c).map_err(|e| tls_error("tls_ca", e))?;
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_error("tls_ca", e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("tls", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error("tls_cert", format!("certificate and key do not fit: {e}")))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("tls", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error("tls_cert", format!("certificate and key do not fit: {e}")))?;
        Ok(TlsConfig { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// What a process's control connections prove: nothing (the default, for a
/// trusted network), the cluster's secret, TLS with mutual authentication, or
/// both (the secret's handshake then runs inside TLS).
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub(crate) secret: Option<ClusterSecret>,
    pub(crate) tls: Option<TlsConfig>,
}

impl Security {
    /// No authentication, no encryption.
    pub fn none() -> Self {
        Security::default()
    }

    /// Every connection proves it holds `secret`.
    #[must_use]
    pub fn with_secret(mut self, secret: ClusterSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Every connection runs over TLS with mutual authentication.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether connections carry a secret's proof.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether connections run over TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_with_the_same_secret_label_and_nonces() {
        let s = ClusterSecret::new(b"0123456789abcdef0123456789abcdef\n").unwrap();
        let other = ClusterSecret::new(b"0123456789abcdef0123456789abcdeX").unwrap();
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b, "fresh nonces");
        let p = s.prove(b"server", &a, &b);
        assert!(s.verify(b"server", &a, &b, &p));
        assert!(!other.verify(b"server", &a, &b, &p), "another secret");
        assert!(!s.verify(b"client", &a, &b, &p), "another label: no reflection");
        assert!(!s.verify(b"server", &b, &a, &p), "nonces swapped");
        let trimmed = ClusterSecret::new(b"  0123456789abcdef0123456789abcdef  ").unwrap();
        assert!(trimmed.verify(b"server", &a, &b, &p), "whitespace around a secret is not part of it");
    }

    #[test]
    fn a_short_secret_or_bad_pem_is_a_typed_error() {
        let e = ClusterSecret::new(b"short\n").unwrap_err();
        assert!(e.to_string().contains("at least 16 bytes"), "{e}");
        let e = TlsConfig::from_pem(b"not pem", b"", b"").unwrap_err();
        assert!(e.to_string().contains("tls_cert"), "{e}");
    }
}
