//! Test certificates made at test time (a CA, server and client certificates, with
//! rcgen) and a canned-answer HTTPS server on 127.0.0.1 (tokio-rustls on ring), for the
//! TLS tests of the library ([`crate::tls_test`]) and of regctl (`tests/regctl_tls.rs`,
//! which includes this file).

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, HandshakeKind, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A certificate and its private key, both PEM, and the certificate's DER.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// A test CA that issues server and client certificates.
pub struct Ca {
    /// The CA's self-signed certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA (ECDSA P-256) called `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "registry");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A registry server's certificate for `names`: it serves HTTPS and is the server's
    /// client certificate when it calls its peers, so it has both key usages.
    pub fn member(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "registry-server");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// What the server saw of one connection.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// Why the handshake failed, if it did (rustls' words).
    pub error: Option<String>,
    /// The first certificate the client presented, DER.
    pub client_cert: Option<Vec<u8>>,
    /// The session was resumed rather than negotiated in full.
    pub resumed: bool,
    /// The protocol ALPN agreed on.
    pub alpn: Option<Vec<u8>>,
    /// `METHOD /path?query` of the request.
    pub request: Option<String>,
}

/// An HTTPS server on 127.0.0.1 that answers every request `200` with a canned body
/// (and `connection: close`, so every request is a new TLS connection) and reports each
/// connection, in order, on a channel. Stops when dropped.
pub struct TlsServer {
    /// `127.0.0.1:port`.
    pub addr: String,
    handshakes: Mutex<mpsc::UnboundedReceiver<Handshake>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    /// A server presenting `server`; with `client_ca`, one that requires a client
    /// certificate signed by that CA.
    pub async fn start(server: &Issued, client_ca: Option<&str>, body: &'static str) -> Self {
        Self::scripted(server, client_ca, move |_| body).await
    }

    /// [`TlsServer::start`] answering each request with `answer(METHOD /path?query)`.
    pub async fn scripted(
        server: &Issued,
        client_ca: Option<&str>,
        answer: impl Fn(&str) -> &'static str + Send + Sync + 'static,
    ) -> Self {
        let answer = Arc::new(answer);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                    .unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = vec![CertificateDer::from(server.der.clone())];
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let mut config = builder.with_single_cert(chain, key).unwrap();
        // What a registry server must offer for this client: HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (report, handshakes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, report, answer) = (acceptor.clone(), report.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = report.send(Handshake {
                                error: Some(e.to_string()),
                                ..Handshake::default()
                            });
                            return;
                        }
                    };
                    let (_, connection) = tls.get_ref();
                    let mut seen = Handshake {
                        error: None,
                        client_cert: connection
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|cert| cert.to_vec()),
                        resumed: connection.handshake_kind() == Some(HandshakeKind::Resumed),
                        alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
                        request: None,
                    };
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) => break,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                            Err(e) => {
                                seen.error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let line = text.lines().next().unwrap_or_default();
                    let line = line.trim_end_matches(" HTTP/1.1").to_owned();
                    let body = answer(&line);
                    seen.request = Some(line);
                    // Reported before answering, so a client that has its answer can
                    // count on the report being there.
                    let _ = report.send(seen);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         x-registry-index: 7\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsServer {
            addr,
            handshakes: Mutex::new(handshakes),
            task,
        }
    }

    /// The next connection the server saw (waiting up to 5 s for it).
    pub async fn next_handshake(&self) -> Handshake {
        let mut handshakes = self.handshakes.lock().await;
        tokio::time::timeout(Duration::from_secs(5), handshakes.recv())
            .await
            .expect("the server saw no connection within 5 s")
            .expect("the server stopped")
    }

    /// A connection the server has already reported, if any.
    pub async fn try_handshake(&self) -> Option<Handshake> {
        self.handshakes.lock().await.try_recv().ok()
    }

    /// The next connection whose request line passes `wanted`, skipping others.
    pub async fn request_where(&self, wanted: impl Fn(&str) -> bool) -> Handshake {
        loop {
            let seen = self.next_handshake().await;
            if seen.request.as_deref().is_some_and(&wanted) {
                return seen;
            }
        }
    }
}
