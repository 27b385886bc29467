//! The client's TLS inputs, read and checked when the client is built (so a bad PEM is
//! an [`Error::InvalidTls`] naming what is wrong, not a handshake failure later), and
//! how a TLS failure is told apart from other transport errors.
//!
//! The TLS itself is reqwest's rustls backend with the ring provider; this module only
//! hands it checked inputs.

use std::sync::Arc;

use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::error::{Error, TlsInput};
use crate::Result;

/// The CA certificates of a PEM bundle, as reqwest's root certificates: every
/// `CERTIFICATE` block, each checked to be a certificate rustls can use as a trust
/// anchor. Other blocks (a key, a CRL) are ignored; no certificate at all is an error.
pub(crate) fn root_certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>> {
    let input = TlsInput::CaCertificates;
    let certificates = certificates(pem, input)?;
    let count = certificates.len();
    let mut store = rustls::RootCertStore::empty();
    let mut roots = Vec::with_capacity(count);
    for (n, certificate) in certificates.into_iter().enumerate() {
        store
            .add(certificate.clone())
            .map_err(|e| Error::InvalidTls {
                input,
                reason: format!(
                    "certificate {} of {count} is not a usable X.509 certificate: {e}",
                    n + 1
                ),
            })?;
        roots.push(
            reqwest::Certificate::from_der(certificate.as_ref()).map_err(|e| {
                Error::InvalidTls {
                    input,
                    reason: crate::error::chain(&e),
                }
            })?,
        );
    }
    Ok(roots)
}

/// The client identity of a certificate chain (leaf first) and its private key, as
/// reqwest's `Identity`: both read and checked here (the key must load and belong to
/// the leaf certificate), then handed to `Identity::from_pem`, which wants the chain and
/// the key in one PEM buffer. Only the chain's certificates and the key file's key go
/// into it, so a combined file given as both is fine.
pub(crate) fn identity(chain_pem: &[u8], key_pem: &[u8]) -> Result<reqwest::Identity> {
    let chain = certificates(chain_pem, TlsInput::ClientCertificate)?;
    let key = private_key(key_pem)?;
    let key_label = match &key {
        PrivateKeyDer::Pkcs8(_) => "PRIVATE KEY",
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => {
            return Err(Error::InvalidTls {
                input: TlsInput::ClientKey,
                reason: "unsupported private key format".to_owned(),
            })
        }
    };
    let mut pem = String::new();
    for certificate in &chain {
        pem_block("CERTIFICATE", certificate.as_ref(), &mut pem);
    }
    pem_block(key_label, key.secret_der(), &mut pem);

    let signing_key = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| Error::InvalidTls {
            input: TlsInput::ClientKey,
            reason: format!("the private key cannot be used: {e}"),
        })?;
    match CertifiedKey::new(chain, signing_key).keys_match() {
        // Unknown: the provider cannot say (rustls accepts the pair then too).
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(Error::InvalidTls {
                input: TlsInput::ClientKey,
                reason: "the private key does not belong to the client certificate (the \
                         first one of the chain)"
                    .to_owned(),
            })
        }
        Err(e) => {
            return Err(Error::InvalidTls {
                input: TlsInput::ClientCertificate,
                reason: format!("the first certificate is not a usable X.509 certificate: {e}"),
            })
        }
    }
    reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| Error::InvalidTls {
        input: TlsInput::ClientCertificate,
        reason: crate::error::chain(&e),
    })
}

/// The provider reqwest builds its TLS configuration with: the process default if the
/// program installed one, ring otherwise.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Every `CERTIFICATE` block of `pem`, in order; at least one.
fn certificates(pem: &[u8], input: TlsInput) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidTls {
            input,
            reason: format!("not readable as PEM: {e}"),
        })?;
    if certificates.is_empty() {
        return Err(Error::InvalidTls {
            input,
            reason: format!(
                "no certificate found: expected PEM with `-----BEGIN CERTIFICATE-----` \
                 blocks{}",
                der_hint(pem)
            ),
        });
    }
    Ok(certificates)
}

/// The one private key of `pem` (PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted).
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    let invalid = |reason: String| Error::InvalidTls {
        input: TlsInput::ClientKey,
        reason,
    };
    // The error of a key block that does not decode says nothing of the key: the
    // secret's bytes stay out of messages.
    let mut keys = PrivateKeyDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("not readable as PEM".to_owned()))?;
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 if contains(pem, b"ENCRYPTED PRIVATE KEY") => Err(invalid(
            "the private key is encrypted: give it decrypted".to_owned(),
        )),
        0 => Err(invalid(format!(
            "no private key found: expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or \
             `EC PRIVATE KEY` block{}",
            der_hint(pem)
        ))),
        n => Err(invalid(format!(
            "{n} private keys found: give only the client certificate's"
        ))),
    }
}

/// A hint for input that looks like binary DER (a SEQUENCE tag) rather than PEM text.
fn der_hint(input: &[u8]) -> &'static str {
    if input.first() == Some(&0x30) {
        " (this looks like binary DER: convert it to PEM)"
    } else {
        ""
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Appends `der` to `out` as a PEM block labelled `label`.
fn pem_block(label: &str, der: &[u8], out: &mut String) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// The rustls error behind a transport error, if TLS raised it. rustls errors reach
/// reqwest wrapped in `std::io::Error`, whose `source()` skips the error it wraps, so
/// each I/O error's inner error is looked into too.
pub(crate) fn failure<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = failure(inner) {
                return Some(tls);
            }
        }
        current = error.source();
    }
    None
}
