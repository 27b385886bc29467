//! `regctl`: the registry's command-line tool. Services (register, resolve, watch),
//! fenced locks and elections that run a command while held, leases, cluster
//! membership, and ACL tokens, all over the client's raw API.
//!
//! On a registry with ACLs on, every request carries the token given with `--token` or
//! in `REGISTRY_TOKEN` (as `Authorization: Bearer`).
//!
//! Output is short text by default and the API's JSON with `--json`. Errors are one line
//! on stderr, `regctl: <message>`; the exit codes are listed in [`EXIT_CODES`].

mod acl;
mod admin;
mod catalog;
mod coordination;
mod output;
mod supervise;

use std::time::Duration;

use api_spec::acl::TOKEN_ENV;
use clap::{Parser, Subcommand};
use registry_client::Client;

use crate::output::Failure;

/// Shown at the end of `regctl --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    an error (the registry refused, could not be reached, nothing matched), or a
       lock or leadership not obtained within --wait
  2    wrong usage
  75   `lock`/`elect`: the lock or leadership was lost; the command was stopped
  N    `lock`/`elect` with a command: the command's own exit code (128+S if it was
       killed by signal S); 127 if it could not be started
  130, 143  interrupted (SIGINT, SIGTERM) before the command started";

/// Exit code for any failure that is not more specific.
pub const EXIT_FAILURE: u8 = 1;
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
    /// Registry servers, comma separated `host:port`; any one will do, the next is tried
    /// when one fails.
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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register (or update) a service instance; with --heartbeat, keep it alive until
    /// Ctrl-C or SIGTERM, then deregister it.
    Register(catalog::RegisterArgs),
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
    let mut client = Client::builder(cli.endpoints).timeout(cli.timeout);
    if let Some(Secret(secret)) = cli.token {
        client = client.token(secret);
    }
    let client = client.build()?;
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

async fn dispatch(cx: Context, command: Command) -> Result<u8, Failure> {
    match command {
        Command::Register(args) => catalog::register(&cx, args).await,
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
    }
}

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
    fn endpoints_are_comma_separated_and_durations_need_units() {
        let cli = Cli::try_parse_from(["regctl", "--endpoints", "a:1,b:2", "services"])
            .expect("valid command line");
        assert_eq!(cli.endpoints, ["a:1", "b:2"]);
        assert!(Cli::try_parse_from(["regctl", "--timeout", "10", "services"]).is_err());
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(key_value("=x").is_err() && key_value("x").is_err());
    }
}
