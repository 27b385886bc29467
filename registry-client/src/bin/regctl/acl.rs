//! ACL token commands: `acl bootstrap`, `acl token create|list|self|revoke`.

use std::time::Duration;

use api_spec::acl::{CreateTokenRequest, RevokeTokenResponse, Rule, TokenCreated, TokenInfo};
use clap::{Args, Subcommand};
use registry_client::Uuid;

use crate::output::{self, Failure};
use crate::{duration, Context};

/// What follows a printed secret, so nobody expects to see it again.
pub const SHOWN_ONCE: &str = "The secret is shown only this once: store it now. \
                              regctl sends it from --token or REGISTRY_TOKEN.";

/// `regctl acl ...`.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Turn on a new cluster's ACLs and make its first management token (works once);
    /// prints the token's secret, shown only this once.
    Bootstrap,
    /// Create, list, show and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `regctl acl token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token (needs acl:write); prints its secret, shown only this once, and
    /// its accessor.
    Create(CreateArgs),
    /// List every token by accessor, with its rules (needs acl:read; secrets are never
    /// shown).
    List,
    /// Show the token regctl sends (--token or REGISTRY_TOKEN).
    #[command(name = "self")]
    Current,
    /// Revoke a token (needs acl:write); it stops working at once.
    Revoke {
        /// The token's accessor (its public id, as `acl token list` shows it).
        accessor: Uuid,
    },
}

/// `regctl acl token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// What the token is for, for people (at most 256 characters).
    #[arg(long, default_value = "")]
    pub description: String,
    /// A grant, `resource:access[:prefix]`: resource is service, lock, election, lease,
    /// cluster or acl; access is read or write (write includes read); the prefix limits
    /// it to names starting so (service, lock and election only). Repeat for more.
    #[arg(long = "rule", value_name = "RESOURCE:ACCESS[:PREFIX]")]
    pub rules: Vec<Rule>,
    /// Make a management token: it may do everything, and its rules are ignored.
    #[arg(long)]
    pub management: bool,
    /// How long the token works (1s up to 366 days, e.g. 24h); without it, until revoked.
    #[arg(long, value_parser = duration)]
    pub ttl: Option<Duration>,
}

impl CreateArgs {
    /// The request body these flags ask for.
    pub fn request(&self) -> CreateTokenRequest {
        CreateTokenRequest {
            description: self.description.clone(),
            rules: self.rules.clone(),
            management: self.management,
            ttl: self.ttl.map(api_spec::format_duration),
        }
    }
}

/// Runs `regctl acl ...`.
pub async fn acl(cx: &Context, command: AclCommand) -> Result<u8, Failure> {
    match command {
        AclCommand::Bootstrap => {
            let created = cx.client.acl_bootstrap().await?.value;
            if cx.json {
                output::json(&created)?;
            } else {
                let headline = format!(
                    "bootstrapped ACLs: management token {}",
                    created.token.accessor
                );
                print_lines(created_lines(&headline, &created))?;
            }
        }
        AclCommand::Token(command) => return token(cx, command).await,
    }
    Ok(0)
}

async fn token(cx: &Context, command: TokenCommand) -> Result<u8, Failure> {
    match command {
        TokenCommand::Create(args) => {
            let created = cx.client.acl_create_token(&args.request()).await?.value;
            if cx.json {
                output::json(&created)?;
            } else {
                let headline = format!("created token {}", created.token.accessor);
                print_lines(created_lines(&headline, &created))?;
            }
        }
        TokenCommand::List => {
            let list = cx.client.acl_list_tokens().await?.value;
            if cx.json {
                output::json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list.tokens.iter().map(list_row).collect();
                output::table(
                    &["ACCESSOR", "MANAGEMENT", "EXPIRES", "RULES", "DESCRIPTION"],
                    &rows,
                )?;
            }
        }
        TokenCommand::Current => {
            let token = cx.client.acl_token_self().await?.value;
            if cx.json {
                output::json(&token)?;
            } else {
                output::line(format!("token {}", token.accessor))?;
                print_lines(detail_lines(&token))?;
            }
        }
        TokenCommand::Revoke { accessor } => {
            let answer = cx.client.acl_revoke_token(accessor).await?.value;
            if cx.json {
                output::json(&answer)?;
            } else {
                print_lines(revoked_lines(&answer))?;
            }
        }
    }
    Ok(0)
}

fn print_lines(lines: Vec<String>) -> Result<(), Failure> {
    lines.into_iter().try_for_each(output::line)
}

/// A token's rules as `resource:access[:prefix]`, comma separated; `-` for none.
fn rules_text(rules: &[Rule]) -> String {
    if rules.is_empty() {
        return "-".to_owned();
    }
    rules
        .iter()
        .map(Rule::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// When a token stops working: `never`, or how far off.
fn expiry(token: &TokenInfo) -> String {
    token
        .expires_at_ms
        .map_or_else(|| "never".to_owned(), output::from_now_seconds)
}

fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// The indented lines that describe a token (all of it but its accessor).
fn detail_lines(token: &TokenInfo) -> Vec<String> {
    let description = if token.description.is_empty() {
        "-"
    } else {
        &token.description
    };
    let rules = if token.management {
        "all (management token)".to_owned()
    } else {
        rules_text(&token.rules)
    };
    vec![
        format!("  description  {description}"),
        format!("  management   {}", yes_no(token.management)),
        format!("  rules        {rules}"),
        format!(
            "  created      {} (index {})",
            output::ago(token.created_at_ms),
            token.create_index
        ),
        format!("  expires      {}", expiry(token)),
    ]
}

/// A new token: the headline, its accessor and secret, its details, and the warning
/// that the secret will not be shown again.
fn created_lines(headline: &str, created: &TokenCreated) -> Vec<String> {
    let mut lines = vec![
        headline.to_owned(),
        format!("  accessor     {}", created.token.accessor),
        format!("  secret       {}", created.secret),
    ];
    lines.extend(detail_lines(&created.token));
    lines.push(SHOWN_ONCE.to_owned());
    lines
}

/// One row of `acl token list`, under ACCESSOR, MANAGEMENT, EXPIRES, RULES, DESCRIPTION
/// (free text last: the table does not pad its last column).
fn list_row(token: &TokenInfo) -> Vec<String> {
    vec![
        token.accessor.to_string(),
        yes_no(token.management).to_owned(),
        expiry(token),
        rules_text(&token.rules),
        output::or_dash((!token.description.is_empty()).then_some(&token.description)),
    ]
}

/// What a revoke did, and which members had not confirmed it yet.
fn revoked_lines(answer: &RevokeTokenResponse) -> Vec<String> {
    let mut lines = vec![format!("revoked token {}", answer.accessor)];
    if !answer.unconfirmed_members.is_empty() {
        let members: Vec<String> = answer
            .unconfirmed_members
            .iter()
            .map(u64::to_string)
            .collect();
        lines.push(format!(
            "not yet confirmed by member(s) {} (unreachable when the revoke was answered): \
             they may accept the token until they catch up",
            members.join(", ")
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use api_spec::acl::{Access, Resource};

    use super::*;

    fn token(management: bool) -> TokenInfo {
        TokenInfo {
            accessor: Uuid::from_u128(0x6f1e1c1e_0000_4000_8000_000000000001),
            description: "ci deploys".into(),
            rules: vec![
                Rule {
                    resource: Resource::Service,
                    prefix: "web".into(),
                    access: Access::Write,
                },
                Rule {
                    resource: Resource::Lock,
                    prefix: String::new(),
                    access: Access::Read,
                },
            ],
            management,
            create_index: 12,
            created_at_ms: 1,
            expires_at_ms: None,
        }
    }

    #[test]
    fn a_list_row_shows_accessor_flag_expiry_rules_and_description() {
        let row = list_row(&token(false));
        assert_eq!(
            row,
            [
                "6f1e1c1e-0000-4000-8000-000000000001",
                "no",
                "never",
                "service:write:web,lock:read",
                "ci deploys",
            ]
        );
        let bare = TokenInfo {
            description: String::new(),
            rules: Vec::new(),
            expires_at_ms: Some(u64::MAX),
            ..token(true)
        };
        let row = list_row(&bare);
        assert_eq!(
            (row[1].as_str(), row[3].as_str(), row[4].as_str()),
            ("yes", "-", "-")
        );
        assert!(row[2].starts_with("in "), "{row:?}");
    }

    #[test]
    fn a_created_token_shows_its_secret_once_with_a_warning() {
        let created = TokenCreated {
            secret: "s3cret-0123456789abcdef".into(),
            token: token(false),
        };
        let lines = created_lines("created token x", &created);
        assert_eq!(lines[0], "created token x");
        assert_eq!(
            lines[1],
            "  accessor     6f1e1c1e-0000-4000-8000-000000000001"
        );
        assert_eq!(lines[2], "  secret       s3cret-0123456789abcdef");
        assert!(lines.contains(&"  rules        service:write:web,lock:read".to_owned()));
        assert_eq!(lines.last().map(String::as_str), Some(SHOWN_ONCE));
        assert!(SHOWN_ONCE.contains("only this once"));
        assert_eq!(lines.iter().filter(|l| l.contains("s3cret")).count(), 1);
    }

    #[test]
    fn a_management_token_reads_as_allowed_everything() {
        let lines = detail_lines(&token(true));
        assert!(
            lines.contains(&"  management   yes".to_owned()),
            "{lines:?}"
        );
        assert!(lines.contains(&"  rules        all (management token)".to_owned()));
    }

    #[test]
    fn a_revoke_names_the_members_that_had_not_confirmed() {
        let mut answer = RevokeTokenResponse {
            accessor: Uuid::from_u128(1),
            revoked: true,
            unconfirmed_members: Vec::new(),
        };
        assert_eq!(
            revoked_lines(&answer),
            ["revoked token 00000000-0000-0000-0000-000000000001"]
        );
        answer.unconfirmed_members = vec![2, 3];
        let lines = revoked_lines(&answer);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].starts_with("not yet confirmed by member(s) 2, 3 "),
            "{lines:?}"
        );
    }

    #[test]
    fn the_flags_become_the_request() {
        let args = CreateArgs {
            description: "ci".into(),
            rules: vec!["service:read".parse().expect("a rule")],
            management: false,
            ttl: Some(Duration::from_secs(24 * 60 * 60)),
        };
        let request = args.request();
        assert_eq!(request.rules[0].resource, Resource::Service);
        assert_eq!(request.description, "ci");
        let ttl = request.ttl.expect("a ttl");
        assert_eq!(
            api_spec::parse_duration(&ttl),
            Ok(Duration::from_secs(86_400))
        );
        assert_eq!(CreateArgs { ttl: None, ..args }.request().ttl, None);
    }
}
