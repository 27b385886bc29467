//! Loading, checking and reloading the server's certificates, with certificates made at
//! test time.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{PeerCertificate, Tls, TlsFiles};

use crate::test_certs::{Ca, Issued};

/// Writes `issued` as `name.pem` and `name.key` in `dir`.
fn write(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert, key)
}

fn write_ca(dir: &Path, ca: &Ca) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &ca.cert_pem).unwrap();
    path
}

fn files(cert: &Path, key: &Path, ca: Option<&Path>) -> TlsFiles {
    TlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: ca.map(Path::to_owned),
        verify_clients: false,
    }
}

fn error(files: TlsFiles) -> String {
    match Tls::load(files) {
        Ok(_) => "loaded".to_owned(),
        Err(e) => e,
    }
}

#[test]
fn a_member_certificate_loads_and_suits_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = write(dir.path(), "n1", &ca.member(&["127.0.0.1", "localhost"]));
    let ca_path = write_ca(dir.path(), &ca);
    let tls = Tls::load(files(&cert, &key, Some(&ca_path))).unwrap();
    assert!(tls.authenticates_peers());
    tls.check_own_certificate("127.0.0.1:7401").unwrap();
    tls.check_own_certificate("localhost:7401").unwrap();
    let e = tls.check_own_certificate("10.0.0.9:7401").unwrap_err();
    assert!(
        e.contains(&cert.display().to_string()) && e.contains("10.0.0.9"),
        "{e}"
    );
}

#[test]
fn without_a_ca_nothing_is_checked_against_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = write(dir.path(), "n1", &ca.server(&["127.0.0.1"]));
    let tls = Tls::load(files(&cert, &key, None)).unwrap();
    assert!(!tls.authenticates_peers());
    tls.check_own_certificate("10.0.0.9:7401").unwrap();
}

#[test]
fn a_server_certificate_without_client_auth_cannot_be_a_member_s() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = write(dir.path(), "n1", &ca.server(&["127.0.0.1"]));
    let ca_path = write_ca(dir.path(), &ca);
    let tls = Tls::load(files(&cert, &key, Some(&ca_path))).unwrap();
    let e = tls.check_own_certificate("127.0.0.1:7401").unwrap_err();
    assert!(e.contains("clientAuth"), "{e}");
}

#[test]
fn a_certificate_of_another_ca_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write(dir.path(), "n1", &Ca::new("other").member(&["127.0.0.1"]));
    let ca_path = write_ca(dir.path(), &Ca::new("test CA"));
    let tls = Tls::load(files(&cert, &key, Some(&ca_path))).unwrap();
    let e = tls.check_own_certificate("127.0.0.1:7401").unwrap_err();
    assert!(
        e.contains("--tls-cert") && e.contains("signed by --tls-ca"),
        "{e}"
    );
}

#[test]
fn every_bad_input_is_one_line_naming_its_flag_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = write(dir.path(), "n1", &ca.member(&["127.0.0.1"]));
    let (_, other_key) = write(dir.path(), "n2", &ca.member(&["127.0.0.1"]));
    let ca_path = write_ca(dir.path(), &ca);
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let der = dir.path().join("cert.der");
    std::fs::write(&der, &ca.member(&["127.0.0.1"]).der).unwrap();

    let cases: Vec<(TlsFiles, &str, &Path)> = vec![
        (files(&missing, &key, None), "--tls-cert", &missing),
        (files(&cert, &missing, None), "--tls-key", &missing),
        (files(&cert, &key, Some(&missing)), "--tls-ca", &missing),
        (files(&garbage, &key, None), "--tls-cert", &garbage),
        (files(&der, &key, None), "--tls-cert", &der),
        (files(&cert, &garbage, None), "--tls-key", &garbage),
        (files(&cert, &cert, None), "--tls-key", &cert),
        (files(&cert, &other_key, None), "--tls-key", &other_key),
        (files(&cert, &key, Some(&garbage)), "--tls-ca", &garbage),
    ];
    for (files, flag, path) in cases {
        let e = error(files);
        assert!(
            e.starts_with(flag) && e.contains(&path.display().to_string()),
            "{flag} {}: {e}",
            path.display()
        );
        assert!(!e.contains('\n'), "{e}");
    }
    let e = error(TlsFiles {
        verify_clients: true,
        ..files(&cert, &key, None)
    });
    assert!(e.contains("--tls-verify-clients needs --tls-ca"), "{e}");
    assert!(error(files(&cert, &other_key, None)).contains("does not belong"));
    assert!(error(files(&der, &key, None)).contains("binary DER"));
    let _ = ca_path;
}

#[test]
fn a_reload_takes_new_files_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let first = ca.member(&["127.0.0.1"]);
    let (cert, key) = write(dir.path(), "n1", &first);
    let ca_path = write_ca(dir.path(), &ca);
    let tls = Tls::load(files(&cert, &key, Some(&ca_path))).unwrap();
    let in_use = |tls: &Tls| tls.keys.current().cert[0].as_ref().to_vec();
    assert_eq!(in_use(&tls), first.der);

    let second = ca.member(&["127.0.0.1"]);
    write(dir.path(), "n1", &second);
    tls.reload("127.0.0.1:7401").unwrap();
    assert_eq!(in_use(&tls), second.der);

    // A certificate of another CA, a half-written key: refused, the second stays.
    write(dir.path(), "n1", &Ca::new("other").member(&["127.0.0.1"]));
    assert!(tls.reload("127.0.0.1:7401").is_err());
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    assert!(tls.reload("127.0.0.1:7401").is_err());
    assert_eq!(in_use(&tls), second.der);
}

#[test]
fn a_peer_certificate_names_the_hosts_in_its_subject_alternative_names() {
    let ca = Ca::new("test CA");
    let issued = ca.member(&["10.0.0.7", "node-1.example", "::1"]);
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    let peer = PeerCertificate(std::sync::Arc::new(der));
    assert!(peer.names_host_of("10.0.0.7:7400"));
    assert!(peer.names_host_of("node-1.example:7400"));
    assert!(peer.names_host_of("[::1]:7400"));
    assert!(!peer.names_host_of("10.0.0.8:7400"));
    assert!(!peer.names_host_of("node-2.example:7400"));
    let client = ca.client("alice");
    let der = CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap();
    assert!(!PeerCertificate(std::sync::Arc::new(der)).names_host_of("10.0.0.7:7400"));
}
