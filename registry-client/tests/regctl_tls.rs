//! regctl's TLS settings from the environment (`REGISTRY_CACERT`, `REGISTRY_CERT`,
//! `REGISTRY_KEY`), run as the real binary so the variables are set only for it: the
//! one-line errors and exit codes of unusable files, and mutual TLS against an HTTPS
//! server on 127.0.0.1.

use std::process::Output;

#[cfg(test)]
#[allow(dead_code)]
#[path = "../src/tls_test_support.rs"]
mod tls_test_support;

use tls_test_support::{Ca, TlsServer};

/// The variables regctl reads; cleared for every run so the caller's do not leak in.
const VARIABLES: [&str; 5] = [
    "REGISTRY_ENDPOINTS",
    "REGISTRY_TOKEN",
    "REGISTRY_CACERT",
    "REGISTRY_CERT",
    "REGISTRY_KEY",
];

/// Runs regctl with `args` and the environment variables `env`, and nothing else of
/// regctl's.
async fn regctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_regctl"));
    for variable in VARIABLES {
        command.env_remove(variable);
    }
    command.args(args).envs(env.iter().copied());
    command.output().await.expect("regctl runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn an_unreadable_cacert_is_one_line_naming_the_file_and_a_usage_exit() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("ca.pem");
    let missing = missing.to_string_lossy();
    let expected = format!("regctl: cannot read --cacert {missing}: No such file or directory\n");

    let output = regctl(&["--cacert", &missing, "services"], &[]).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(stderr(&output), expected);
    assert!(output.stdout.is_empty());

    let output = regctl(&["services"], &[("REGISTRY_CACERT", &missing)]).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(stderr(&output), expected);
}

#[tokio::test]
async fn registry_cert_without_registry_key_is_a_usage_error() {
    let output = regctl(&["services"], &[("REGISTRY_CERT", "/nonexistent/me.pem")]).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("--key"), "{}", stderr(&output));
}

#[tokio::test]
async fn mutual_tls_from_the_environment() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = Ca::new("registry test CA");
    let me = ca.client("regctl");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("written");
        path.to_string_lossy().into_owned()
    };
    let (cacert, cert, key) = (
        write("ca.pem", &ca.cert_pem),
        write("me.pem", &me.cert_pem),
        write("me.key", &me.key_pem),
    );
    let server = TlsServer::start(
        &ca.server(&["127.0.0.1"]),
        Some(&ca.cert_pem),
        r#"{"services":[{"name":"web","instances":2,"healthy":1}]}"#,
    )
    .await;

    // A bare endpoint: https, because a TLS file is set.
    let output = regctl(
        &["services"],
        &[
            ("REGISTRY_ENDPOINTS", &server.addr),
            ("REGISTRY_CACERT", &cacert),
            ("REGISTRY_CERT", &cert),
            ("REGISTRY_KEY", &key),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["SERVICE  INSTANCES  HEALTHY", "web      2          1"]
    );
    let seen = server.next_handshake().await;
    assert_eq!(seen.client_cert.as_deref(), Some(me.der.as_slice()));

    // Without the client certificate: refused, one line, exit 1.
    let output = regctl(
        &[
            "--endpoints",
            &format!("https://{}", server.addr),
            "services",
        ],
        &[("REGISTRY_CACERT", &cacert)],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with(&format!("regctl: TLS with {} failed: ", server.addr)),
        "{text}"
    );
}
