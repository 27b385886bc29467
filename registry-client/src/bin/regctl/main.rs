//! `regctl`: the registry's command-line tool. Services (register, resolve, watch),
//! fenced locks and elections that run a command while held, leases, cluster
//! membership, and ACL tokens, all over the client's raw API.
//!
//! On a registry with ACLs on, every request carries the token given with `--token` or
//! in `REGISTRY_TOKEN` (as `Authorization: Bearer`).
//!
//! Over TLS: `--endpoints https://...`, or bare `host:port` endpoints with `--cacert`
//! (the registry's CA, trusted instead of the built-in roots) and/or `--cert` and
//! `--key` (a client certificate for servers that require one); each also from the
//! environment (`REGISTRY_CACERT`, `REGISTRY_CERT`, `REGISTRY_KEY`).
//!
//! Output is short text by default and the API's JSON with `--json`. Errors are one line
//! on stderr, `regctl: <message>`; the exit codes are listed in [`EXIT_CODES`].

mod acl;
mod admin;
mod catalog;
mod coordination;
mod output;
mod supervise;

use std::path::{Path, PathBuf};
use std::time::Duration;

use api_spec::acl::TOKEN_ENV;
use clap::{Parser, Subcommand};
use registry_client::{Client, ClientBuilder, TlsInput};

use crate::output::Failure;

/// Shown at the end of `regctl --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    an error (the registry refused, could not be reached, nothing matched), or a
       lock or leadership not obtained within --wait
  2    wrong usage, or a setting regctl cannot use (an --endpoints entry that is not
       host:port, a --cacert, --cert or --key file it cannot read or that holds no
       usable certificate or key)
  75   `lock`/`elect`: the lock or leadership was lost; the command was stopped
  N    `lock`/`elect` with a command: the command's own exit code (128+S if it was
       killed by signal S); 127 if it could not be started
  130, 143  interrupted (SIGINT, SIGTERM) before the command started";

/// Exit code for any failure that is not more specific.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for wrong usage, as clap exits with, and for settings that cannot be used
/// (bad endpoints, unreadable or invalid TLS files), found before anything is sent.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when a held lock or leadership was lost (EX_TEMPFAIL: trying again later
/// may well work).
pub const EXIT_LOST: u8 = 75;

#[derive(Debug, Parser)]
#[command(
    name = "regctl",
    version,
    about = "Command-line tool for the registry: services, locks, elections, leases, cluster, ACLs",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Registry servers, comma separated `host:port` (or `http://host:port`,
    /// `https://host:port`; all with one scheme); any one will do, the next is tried when
    /// one fails. Bare `host:port` is https with --cacert or --cert, http otherwise.
    #[arg(
        long,
        global = true,
        env = "REGISTRY_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7400"
    )]
    endpoints: Vec<String>,

    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Timeout of one request to one server (requests the server holds, such as waiting
    /// acquires and blocking queries, get their wait on top).
    #[arg(long, global = true, value_parser = duration, default_value = "10s")]
    timeout: Duration,

    /// ACL token secret to send with every request. Prefer the environment variable: a
    /// flag's value shows in the process list.
    #[arg(
        long,
        global = true,
        env = TOKEN_ENV,
        hide_env_values = true,
        value_name = "SECRET"
    )]
    token: Option<Secret>,

    /// CA certificates (PEM) that sign the servers' certificates; only these are trusted
    /// then, not the built-in roots.
    #[arg(long, global = true, env = "REGISTRY_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// Client certificate (PEM: the certificate, then any intermediates) for servers that
    /// require one; needs --key.
    #[arg(
        long,
        global = true,
        env = "REGISTRY_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    cert: Option<PathBuf>,

    /// Private key (PEM, unencrypted) of --cert; needs --cert.
    #[arg(
        long,
        global = true,
        env = "REGISTRY_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    key: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register (or update) a service instance; with --heartbeat, keep it alive until
    /// Ctrl-C or SIGTERM, then deregister it. With active checks (--http-check, ...) and
    /// no --ttl or --lease it needs no heartbeats: regctl registers it and exits.
    Register(Box<catalog::RegisterArgs>),
    /// Deregister an instance.
    Deregister { service: String, id: String },
    /// List services with their instance counts.
    Services,
    /// Print `address:port` of each healthy instance of a service (one per line).
    Resolve(catalog::ResolveArgs),
    /// Print a service's instances, then again each time they change.
    Watch(catalog::WatchArgs),
    /// Run a command while holding a lock; the command gets the fencing token in
    /// REGISTRY_LOCK_TOKEN and is stopped if the lock is lost.
    Lock(coordination::LockArgs),
    /// List locks that are held, waited for, or in their lock-delay.
    Locks,
    /// Show a lock's holder, token and waiters.
    LockInfo { name: String },
    /// Campaign in an election and hold leadership (running a command, if given), or
    /// follow an election with --observe.
    Elect(coordination::ElectArgs),
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Create, renew, revoke and read leases.
    #[command(subcommand)]
    Lease(admin::LeaseCommand),
    /// Bootstrap ACLs; create, list, show and revoke tokens.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Save a backup of the registry, or inspect one.
    #[command(subcommand)]
    Snapshot(admin::SnapshotCommand),
}

/// A token's secret, as `--token` or `REGISTRY_TOKEN` gave it; `Debug` leaves it out.
#[derive(Clone)]
pub struct Secret(String);

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret(secret)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Reads a duration such as `15s`, `500ms`, `1m30s` (a unit is required).
pub fn duration(text: &str) -> Result<Duration, String> {
    api_spec::parse_duration(text).map_err(|e| e.to_string())
}

/// Reads `KEY=VALUE`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// What every command gets besides its own arguments.
#[derive(Debug, Clone)]
pub struct Context {
    pub client: Client,
    /// `--json`: print the API's JSON rather than text.
    pub json: bool,
}

fn main() -> std::process::ExitCode {
    // Usage errors exit with 2 here (and --help/--version with 0), before anything runs.
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    };
    std::process::ExitCode::from(code)
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let mut client = Client::builder(&cli.endpoints).timeout(cli.timeout);
    if let Some(Secret(secret)) = &cli.token {
        client = client.token(secret);
    }
    let client = tls(client, &cli)?
        .build()
        .map_err(|e| build_failure(&e, &cli))?;
    let context = Context {
        client,
        json: cli.json,
    };
    // One thread is plenty for one command line: at most a child, a renewal loop and a
    // request or two in flight.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(dispatch(context, cli.command))
}

/// The builder with the TLS files of `--cacert`, `--cert` and `--key`, read here.
fn tls(mut client: ClientBuilder, cli: &Cli) -> Result<ClientBuilder, Failure> {
    if let Some(path) = &cli.cacert {
        client = client.tls_ca_pem(read_file("--cacert", path)?);
    }
    match (&cli.cert, &cli.key) {
        (Some(cert), Some(key)) => {
            client = client.tls_identity_pem(read_file("--cert", cert)?, read_file("--key", key)?);
        }
        (None, None) => {}
        // clap already refuses one without the other.
        _ => {
            return Err(Failure::with_code(
                EXIT_USAGE,
                "--cert and --key go together",
            ))
        }
    }
    Ok(client)
}

/// The contents of the file `flag` names, or a one-line usage failure naming both.
fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        Failure::with_code(
            EXIT_USAGE,
            format!("cannot read {flag} {}: {}", path.display(), io_reason(&e)),
        )
    })
}

/// An I/O error's text without the ` (os error N)` the system's message ends with.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// Why the client could not be built, as a usage failure: a TLS input names its flag
/// and file.
fn build_failure(error: &registry_client::Error, cli: &Cli) -> Failure {
    let message = match error {
        registry_client::Error::InvalidTls { input, reason } => {
            let (flag, path) = match input {
                TlsInput::CaCertificates => ("--cacert", &cli.cacert),
                TlsInput::ClientCertificate => ("--cert", &cli.cert),
                TlsInput::ClientKey => ("--key", &cli.key),
            };
            match path {
                Some(path) => format!("{flag} {}: {reason}", path.display()),
                None => format!("{flag}: {reason}"),
            }
        }
        other => output::describe(other),
    };
    Failure::with_code(EXIT_USAGE, message)
}

async fn dispatch(cx: Context, command: Command) -> Result<u8, Failure> {
    match command {
        Command::Register(args) => catalog::register(&cx, *args).await,
        Command::Deregister { service, id } => catalog::deregister(&cx, &service, &id).await,
        Command::Services => catalog::services(&cx).await,
        Command::Resolve(args) => catalog::resolve(&cx, args).await,
        Command::Watch(args) => catalog::watch(&cx, args).await,
        Command::Lock(args) => coordination::lock(&cx, args).await,
        Command::Locks => coordination::locks(&cx).await,
        Command::LockInfo { name } => coordination::lock_info(&cx, &name).await,
        Command::Elect(args) => coordination::elect(&cx, args).await,
        Command::Cluster(command) => admin::cluster(&cx, command).await,
        Command::Lease(command) => admin::lease(&cx, command).await,
        Command::Acl(command) => acl::acl(&cx, command).await,
        Command::Snapshot(command) => admin::snapshot(&cx, command).await,
    }
}

#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tls_test_support.rs"]
mod tls_test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn lock_takes_the_command_after_a_double_dash() {
        let cli = Cli::try_parse_from([
            "regctl", "lock", "job", "--ttl", "2s", "--", "sh", "-c", "x",
        ])
        .expect("valid command line");
        let Command::Lock(args) = cli.command else {
            panic!("not a lock command")
        };
        assert_eq!(args.name, "job");
        assert_eq!(args.ttl, Duration::from_secs(2));
        assert_eq!(args.command, ["sh", "-c", "x"]);
        assert!(Cli::try_parse_from(["regctl", "lock", "job"]).is_err());
    }

    #[test]
    fn elect_takes_an_existing_lease_instead_of_a_ttl() {
        let id = "6f1e1c1e-0000-4000-8000-000000000000";
        assert!(parse(&["elect", "primary", "--candidate", "a", "--lease", id]).is_ok());
        assert!(parse(&[
            "elect",
            "p",
            "--candidate",
            "a",
            "--lease",
            id,
            "--ttl",
            "2s"
        ])
        .is_err());
        assert!(parse(&["elect", "p", "--observe", "--lease", id]).is_err());
        assert!(parse(&["elect", "p", "--candidate", "a", "--lease", "nope"]).is_err());
    }

    #[test]
    fn lock_takes_an_existing_lease_instead_of_a_ttl() {
        let id = "6f1e1c1e-0000-4000-8000-000000000000";
        let cli = parse(&["lock", "job", "--lease", id, "--", "true"]).expect("valid");
        let Command::Lock(args) = cli.command else {
            panic!("not a lock command")
        };
        assert_eq!(args.lease.map(|l| l.to_string()).as_deref(), Some(id));
        assert!(parse(&["lock", "job", "--lease", id, "--ttl", "2s", "--", "true"]).is_err());
        assert!(parse(&["lock", "job", "--lease", "not-a-uuid", "--", "true"]).is_err());
        let cli = parse(&["lock", "job", "--", "true"]).expect("valid");
        let Command::Lock(args) = cli.command else {
            panic!("not a lock command")
        };
        assert_eq!(args.lease, None);
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("regctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_token_comes_from_the_flag_or_registry_token_and_help_hides_it() {
        // The env attribute is the api-spec constant, not a copy of it.
        let command = Cli::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .expect("a --token argument");
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new("REGISTRY_TOKEN")));
        assert_eq!(TOKEN_ENV, "REGISTRY_TOKEN");
        assert!(arg.is_global_set());

        // Everything that reads the variable is in this one test, so no other test
        // sees it set.
        std::env::set_var(TOKEN_ENV, "from-the-env-0123456789");
        let from_env = parse(&["services"]);
        let from_flag = parse(&["acl", "token", "self", "--token", "from-the-flag"]);
        let help = Cli::command().render_long_help().to_string();
        std::env::remove_var(TOKEN_ENV);

        let from_env = from_env.expect("valid command line");
        assert_eq!(
            from_env.token.map(|Secret(s)| s).as_deref(),
            Some("from-the-env-0123456789")
        );
        let from_flag = from_flag.expect("valid command line");
        assert!(!format!("{from_flag:?}").contains("from-the-flag"));
        assert_eq!(
            from_flag.token.map(|Secret(s)| s).as_deref(),
            Some("from-the-flag")
        );
        assert!(help.contains("REGISTRY_TOKEN"), "{help}");
        assert!(!help.contains("from-the-env"), "{help}");
    }

    #[test]
    fn acl_commands_parse() {
        let cli = parse(&["acl", "bootstrap", "--json"]).expect("valid command line");
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Acl(acl::AclCommand::Bootstrap)
        ));

        let cli = parse(&[
            "acl",
            "token",
            "create",
            "--description",
            "ci deploys",
            "--rule",
            "service:write:web",
            "--rule",
            "lock:read",
            "--ttl",
            "24h",
        ])
        .expect("valid command line");
        let Command::Acl(acl::AclCommand::Token(acl::TokenCommand::Create(args))) = cli.command
        else {
            panic!("not acl token create: {:?}", cli.command)
        };
        assert_eq!(args.description, "ci deploys");
        let rules: Vec<String> = args.rules.iter().map(ToString::to_string).collect();
        assert_eq!(rules, ["service:write:web", "lock:read"]);
        assert!(!args.management);
        assert_eq!(args.ttl, Some(Duration::from_secs(24 * 60 * 60)));

        let cli = parse(&["acl", "token", "create", "--management"]).expect("valid");
        let Command::Acl(acl::AclCommand::Token(acl::TokenCommand::Create(args))) = cli.command
        else {
            panic!("not acl token create")
        };
        assert!(args.management && args.rules.is_empty() && args.ttl.is_none());
        assert_eq!(args.description, "");

        assert!(matches!(
            parse(&["acl", "token", "list"]).expect("valid").command,
            Command::Acl(acl::AclCommand::Token(acl::TokenCommand::List))
        ));
        assert!(matches!(
            parse(&["acl", "token", "self"]).expect("valid").command,
            Command::Acl(acl::AclCommand::Token(acl::TokenCommand::Current))
        ));
        let cli = parse(&[
            "acl",
            "token",
            "revoke",
            "6f1e1c1e-0000-4000-8000-000000000001",
        ])
        .expect("valid command line");
        let Command::Acl(acl::AclCommand::Token(acl::TokenCommand::Revoke { accessor })) =
            cli.command
        else {
            panic!("not acl token revoke")
        };
        assert_eq!(accessor.to_string(), "6f1e1c1e-0000-4000-8000-000000000001");
    }

    #[test]
    fn bad_acl_arguments_are_usage_errors() {
        for bad in [
            &["acl", "token", "create", "--rule", "service"][..],
            &["acl", "token", "create", "--rule", "services:read"],
            &["acl", "token", "create", "--rule", "service:admin"],
            // Leases have no names, so no prefix.
            &["acl", "token", "create", "--rule", "lease:read:x"],
            &["acl", "token", "create", "--ttl", "24"],
            &["acl", "token", "revoke", "not-an-accessor"],
            &["acl", "token", "revoke"],
            &["acl"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} should be refused"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn tls_files_come_from_their_flags_and_cert_and_key_go_together() {
        let cli = parse(&[
            "--endpoints",
            "https://a:1,https://b:2",
            "--cacert",
            "/etc/registry/ca.pem",
            "--cert",
            "me.pem",
            "--key",
            "me.key",
            "services",
        ])
        .expect("valid command line");
        assert_eq!(cli.endpoints, ["https://a:1", "https://b:2"]);
        assert_eq!(
            cli.cacert.as_deref(),
            Some(Path::new("/etc/registry/ca.pem"))
        );
        assert_eq!(cli.cert.as_deref(), Some(Path::new("me.pem")));
        assert_eq!(cli.key.as_deref(), Some(Path::new("me.key")));

        // Global: after the subcommand too.
        let cli = parse(&[
            "lease",
            "get",
            "6f1e1c1e-0000-4000-8000-000000000001",
            "--cacert",
            "ca.pem",
        ])
        .expect("valid command line");
        assert_eq!(cli.cacert.as_deref(), Some(Path::new("ca.pem")));
        assert!(cli.cert.is_none() && cli.key.is_none());

        for bad in [
            &["--cert", "me.pem", "services"][..],
            &["--key", "me.key", "services"],
            &["services", "--cert", "me.pem"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} should be refused"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{bad:?}: {err}"
            );
        }

        // The environment variables (the binary's tests set them: only in a child's
        // environment, which no other test shares).
        let command = Cli::command();
        for (id, env) in [
            ("cacert", "REGISTRY_CACERT"),
            ("cert", "REGISTRY_CERT"),
            ("key", "REGISTRY_KEY"),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect("the argument");
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(env)), "{id}");
            assert!(arg.is_global_set(), "{id}");
        }
    }

    #[test]
    fn an_unreadable_tls_file_is_one_usage_line_naming_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("ca.pem");
        let failure = read_file("--cacert", &missing).expect_err("no such file");
        assert_eq!(failure.code(), EXIT_USAGE);
        assert_eq!(
            failure.message(),
            Some(
                format!(
                    "cannot read --cacert {}: No such file or directory",
                    missing.display()
                )
                .as_str()
            )
        );

        // Found before anything is sent (nothing listens on port 1).
        let path = missing.to_string_lossy().into_owned();
        let cli = parse(&["--endpoints", "127.0.0.1:1", "--cacert", &path, "services"])
            .expect("valid command line");
        let failure = run(cli).expect_err("an unreadable --cacert");
        assert_eq!(failure.code(), EXIT_USAGE);
        assert_eq!(
            failure.message(),
            Some(format!("cannot read --cacert {path}: No such file or directory").as_str())
        );

        let key = dir.path().to_string_lossy().into_owned();
        let cli = parse(&["--cert", &path, "--key", &key, "services"]).expect("valid");
        let failure = run(cli).expect_err("an unreadable --cert");
        assert_eq!(
            failure.message(),
            Some(format!("cannot read --cert {path}: No such file or directory").as_str())
        );
    }

    #[test]
    fn a_tls_file_without_a_certificate_or_key_is_a_usage_line_naming_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = tls_test_support::Ca::new("registry test CA");
        let me = ca.client("regctl");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("written");
            path.to_string_lossy().into_owned()
        };
        let garbage = file("garbage.pem", "not PEM at all");
        let cert = file("me.pem", &me.cert_pem);
        let key = file("me.key", &me.key_pem);

        let cli = parse(&["--cacert", &garbage, "services"]).expect("valid");
        let failure = run(cli).expect_err("no certificate");
        assert_eq!(failure.code(), EXIT_USAGE);
        let message = failure.message().expect("a message");
        assert!(
            message.starts_with(&format!("--cacert {garbage}: no certificate found")),
            "{message}"
        );

        let cli = parse(&["--cert", &cert, "--key", &cert, "services"]).expect("valid");
        let message = run(cli).expect_err("no key").message().map(str::to_owned);
        let message = message.expect("a message");
        assert!(
            message.starts_with(&format!("--key {cert}: no private key found")),
            "{message}"
        );

        // The mixed schemes of --endpoints are a usage error too.
        let cli = parse(&["--endpoints", "https://a:1,http://b:2", "services"]).expect("valid");
        let failure = run(cli).expect_err("mixed schemes");
        assert_eq!(failure.code(), EXIT_USAGE);
        assert!(
            failure
                .message()
                .is_some_and(|m| m.contains("mixes http:// and https://")),
            "{:?}",
            failure.message()
        );

        // And a good pair builds (then fails to connect: nothing listens on port 1).
        let cli = parse(&[
            "--endpoints",
            "127.0.0.1:1",
            "--cert",
            &cert,
            "--key",
            &key,
            "services",
        ])
        .expect("valid");
        let failure = run(cli).expect_err("nobody listens");
        assert_eq!(failure.code(), EXIT_FAILURE);
        assert!(
            failure
                .message()
                .is_some_and(|m| m.starts_with("cannot connect to 127.0.0.1:1")),
            "{:?}",
            failure.message()
        );
    }

    #[test]
    fn over_tls_with_the_ca_and_a_client_certificate() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = tls_test_support::Ca::new("registry test CA");
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
        // The server runs on a runtime of its own; run() builds regctl's.
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let server = runtime.block_on(tls_test_support::TlsServer::start(
            &ca.server(&["127.0.0.1"]),
            Some(&ca.cert_pem),
            r#"{"services":[]}"#,
        ));
        let endpoint = format!("https://{}", server.addr);

        let cli = parse(&[
            "--endpoints",
            &endpoint,
            "--cacert",
            &cacert,
            "--cert",
            &cert,
            "--key",
            &key,
            "services",
        ])
        .expect("valid command line");
        assert_eq!(run(cli).expect("services over mutual TLS"), 0);
        let seen = runtime.block_on(server.next_handshake());
        assert_eq!(seen.client_cert.as_deref(), Some(me.der.as_slice()));
        assert_eq!(seen.request.as_deref(), Some("GET /v1/services"));

        // Without the client certificate the server refuses: one line that says TLS.
        let cli = parse(&["--endpoints", &endpoint, "--cacert", &cacert, "services"])
            .expect("valid command line");
        let failure = run(cli).expect_err("no client certificate");
        assert_eq!(failure.code(), EXIT_FAILURE);
        let message = failure.message().expect("a message");
        assert_eq!(
            message,
            format!(
                "TLS with {} failed: received fatal alert: CertificateRequired (see \
                 --cacert, --cert, --key)",
                server.addr
            )
        );
        drop(server);
    }

    #[test]
    fn endpoints_are_comma_separated_and_durations_need_units() {
        let cli = Cli::try_parse_from(["regctl", "--endpoints", "a:1,b:2", "services"])
            .expect("valid command line");
        assert_eq!(cli.endpoints, ["a:1", "b:2"]);
        assert!(Cli::try_parse_from(["regctl", "--timeout", "10", "services"]).is_err());
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(key_value("=x").is_err() && key_value("x").is_err());
    }
}
