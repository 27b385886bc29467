//! TLS for the server (rustls with the ring provider; no OpenSSL): the listeners'
//! acceptor, the configuration of the calls this server makes to its peers, and the
//! certificate and key both use, reloaded on SIGHUP.
//!
//! - `--tls-cert`/`--tls-key`: the server's certificate chain and key. They serve HTTPS
//!   and are this server's client certificate when it calls a peer that asks for one.
//! - `--tls-ca`: the CA bundle peers' certificates are checked against (and clients'
//!   with `--tls-verify-clients`). Without it, peers are checked against the Mozilla
//!   roots and no client certificate is asked for.
//! - A client certificate is asked for whenever `--tls-ca` is given; it is required with
//!   `--tls-verify-clients`. One that is presented must verify either way, and reaches
//!   the internal routes as a [`PeerCertificate`]: a peer is authenticated by it when it
//!   names a member's host (see `http::internal::check_secret`).
//!
//! **Invariant:** every error of loading names the flag and the file it is about, in one
//! line; a reload that fails keeps the certificate in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use tokio_rustls::TlsAcceptor;

/// HTTP/1.1: what peers speak, and what clients get unless they offer `h2`.
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// HTTP/2, offered to clients first (`crate::listener` serves both).
const ALPN_H2: &[u8] = b"h2";

/// TLS sessions kept for resumption by the server (each is a few hundred bytes).
const SESSION_CACHE: usize = 8192;

/// The TLS flags, as given.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub verify_clients: bool,
}

/// A client certificate the TLS handshake verified against `--tls-ca`, put in the
/// extensions of every request of its connection (its first certificate, the leaf).
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<CertificateDer<'static>>);

impl PeerCertificate {
    /// Whether the certificate names the host of `addr` (`host:port`) in its subject
    /// alternative names, as a server's certificate for that address would.
    pub fn names_host_of(&self, addr: &str) -> bool {
        names_host_of(&self.0, addr)
    }
}

/// The server's TLS: built once at start-up, shared by both listeners and the peer client.
#[derive(Clone)]
pub struct Tls {
    keys: Arc<Keys>,
    acceptor: TlsAcceptor,
    peer_client: Arc<rustls::ClientConfig>,
    /// The `--tls-ca` roots, when given: this server's own certificate is checked
    /// against them (as a server's and as a peer client's).
    roots: Option<Arc<RootCertStore>>,
    files: TlsFiles,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the certificate, key and CA, and builds the configurations.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let provider = provider();
        let keys = Arc::new(Keys {
            current: RwLock::new(Arc::new(certified_key(&files.cert, &files.key)?)),
        });
        let roots = match &files.ca {
            Some(path) => Some(Arc::new(ca_roots(path)?)),
            None if files.verify_clients => {
                return Err(
                    "--tls-verify-clients needs --tls-ca, the CA that signs client \
                            certificates"
                        .to_owned(),
                )
            }
            None => None,
        };
        let versions = rustls::DEFAULT_VERSIONS;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS: {e}"))?;
        let server = match &roots {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
                let verifier = if files.verify_clients {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("--tls-ca {}: {e}", display(files.ca.as_deref())))?;
                server.with_client_cert_verifier(verifier)
            }
            None => server.with_no_client_auth(),
        };
        let mut server = server.with_cert_resolver(keys.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        server.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        server.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("TLS session tickets: {e}"))?;

        let peer_roots = match &roots {
            Some(roots) => roots.clone(),
            None => Arc::new(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
        };
        let mut peer_client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(peer_roots)
            .with_client_cert_resolver(keys.clone());
        peer_client.alpn_protocols = vec![ALPN_HTTP1.to_vec()];

        Ok(Tls {
            keys,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            peer_client: Arc::new(peer_client),
            roots,
            files,
        })
    }

    /// What accepts TLS connections on the listeners.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The configuration of this server's calls to its peers: their certificates are
    /// checked against `--tls-ca` (the Mozilla roots without it), and this server's own
    /// certificate is its client certificate.
    pub fn peer_client(&self) -> rustls::ClientConfig {
        (*self.peer_client).clone()
    }

    /// Whether peers can authenticate with their certificates (`--tls-ca` is given, so
    /// a presented certificate is verified against it).
    pub fn authenticates_peers(&self) -> bool {
        self.roots.is_some()
    }

    /// With `--tls-ca`, checks that this server's own certificate is one its peers
    /// accept: signed by that CA, valid now, naming `advertise`'s host, and usable as a
    /// client certificate (peers present theirs when they call). A certificate that is
    /// not would fail every node-to-node call, so start-up stops instead.
    pub fn check_own_certificate(&self, advertise: &str) -> Result<(), String> {
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        check_as_member(&self.keys.current(), roots, advertise).map_err(|reason| {
            format!(
                "--tls-cert {} cannot be this server's certificate: {reason}",
                self.files.cert.display()
            )
        })
    }

    /// Reads the certificate and key again and uses them for new connections, if they
    /// load and (with `--tls-ca`) still suit `advertise`; otherwise keeps the ones in use.
    pub fn reload(&self, advertise: &str) -> Result<(), String> {
        let fresh = certified_key(&self.files.cert, &self.files.key)?;
        if let Some(roots) = &self.roots {
            check_as_member(&fresh, roots, advertise).map_err(|reason| {
                format!(
                    "--tls-cert {} cannot be this server's certificate: {reason}",
                    self.files.cert.display()
                )
            })?;
        }
        *self
            .keys
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// The certificate and key in use, swapped whole on reload; both the listeners and the
/// peer client resolve to it, so a reload takes effect for new connections of both.
#[derive(Debug)]
struct Keys {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Keys {
    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for Keys {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Keys {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn display(path: Option<&Path>) -> String {
    path.map_or_else(String::new, |p| p.display().to_string())
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
}

/// Every `CERTIFICATE` block of the file; at least one.
fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(flag, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: not readable as PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in it (expected PEM `-----BEGIN CERTIFICATE-----` blocks{})",
            path.display(),
            der_hint(&pem)
        ));
    }
    Ok(certificates)
}

/// The certificate chain and key, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = certificates("--tls-cert", cert)?;
    let pem = read("--tls-key", key)?;
    let mut keys = PrivateKeyDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        // The error of a block that does not decode says nothing of the key.
        .map_err(|_| format!("--tls-key {}: not readable as PEM", key.display()))?;
    let private = match keys.len() {
        1 => keys.remove(0),
        0 if pem.windows(9).any(|w| w == b"ENCRYPTED") => {
            return Err(format!(
                "--tls-key {}: the key is encrypted; give it decrypted",
                key.display()
            ))
        }
        0 => {
            return Err(format!(
                "--tls-key {}: no private key in it (expected a PEM `PRIVATE KEY`, `RSA \
                 PRIVATE KEY` or `EC PRIVATE KEY` block{})",
                key.display(),
                der_hint(&pem)
            ))
        }
        n => {
            return Err(format!(
                "--tls-key {}: {n} private keys in it; give only the certificate's",
                key.display()
            ))
        }
    };
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("--tls-key {}: the key cannot be used: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(format!(
            "--tls-key {} does not belong to the certificate in --tls-cert {} (its first one)",
            key.display(),
            cert.display()
        )),
        Err(e) => Err(format!(
            "--tls-cert {}: the first certificate is not usable: {e}",
            cert.display()
        )),
    }
}

/// The CA bundle's certificates as trust anchors.
fn ca_roots(path: &Path) -> Result<RootCertStore, String> {
    let certificates = certificates("--tls-ca", path)?;
    let count = certificates.len();
    let mut roots = RootCertStore::empty();
    for (n, certificate) in certificates.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            format!(
                "--tls-ca {}: certificate {} of {count} is not a usable CA certificate: {e}",
                path.display(),
                n + 1
            )
        })?;
    }
    Ok(roots)
}

/// Why `key`'s certificate could not serve a member at `advertise` whose peers trust
/// `roots`, if it could not.
fn check_as_member(
    key: &CertifiedKey,
    roots: &Arc<RootCertStore>,
    advertise: &str,
) -> Result<(), String> {
    let provider = provider();
    let (leaf, intermediates) = key
        .cert
        .split_first()
        .ok_or_else(|| "no certificate".to_owned())?;
    let now = UnixTime::now();
    let host = host_of(advertise);
    let needs = format!(
        "a member's certificate must be signed by --tls-ca, valid now, name {host} in its \
         subjectAltName, and allow extendedKeyUsage serverAuth and clientAuth"
    );
    let name = ServerName::try_from(host)
        .map_err(|_| format!("{host:?} (of the address {advertise}) is not a host name"))?;
    let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    servers
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map_err(|e| {
            format!("as the server at {advertise}, peers would refuse it ({e}); {needs}")
        })?;
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
        .build()
        .map_err(|e| e.to_string())?;
    clients
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| format!("as a client certificate, peers would refuse it ({e}); {needs}"))?;
    Ok(())
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn names_host_of(certificate: &CertificateDer<'_>, addr: &str) -> bool {
    let Ok(name) = ServerName::try_from(host_of(addr)) else {
        return false;
    };
    ParsedCertificate::try_from(certificate)
        .is_ok_and(|parsed| rustls::client::verify_server_name(&parsed, &name).is_ok())
}

/// A hint for input that looks like binary DER (a SEQUENCE tag) rather than PEM text.
fn der_hint(input: &[u8]) -> &'static str {
    if input.first() == Some(&0x30) {
        "; this looks like binary DER: convert it to PEM"
    } else {
        ""
    }
}

/// Reloads the certificate and key whenever the process gets SIGHUP, for as long as the
/// process runs.
pub fn reload_on_sighup(tls: Tls, advertise: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS certificates will not be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match tls.reload(&advertise) {
                Ok(()) => tracing::info!(
                    cert = %tls.files().cert.display(),
                    "SIGHUP: reloaded the TLS certificate and key; new connections use them"
                ),
                Err(e) => tracing::error!(
                    "SIGHUP: keeping the TLS certificate in use, the new one cannot be used: {e}"
                ),
            }
        }
    });
}

#[cfg(test)]
#[path = "tls_test.rs"]
mod tests;
