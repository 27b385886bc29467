//! How regctl talks back: lines and tables on stdout, the API's JSON with `--json`, and
//! one-line `regctl: ...` messages on stderr. Nothing here panics on a closed pipe
//! (`regctl resolve web | head -1`), unlike `println!`.

use std::fmt::Display;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::EXIT_FAILURE;

/// Why regctl stops early: what to tell the user (if anything) and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// One line for stderr, without the `regctl: ` prefix; `None` exits quietly.
    message: Option<String>,
    code: u8,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: Some(message.into()),
            code: EXIT_FAILURE,
        }
    }

    /// A failure with its own exit code.
    pub fn with_code(code: u8, message: impl Into<String>) -> Self {
        Failure {
            message: Some(message.into()),
            code,
        }
    }

    /// The message, for tests.
    #[cfg(test)]
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The exit code, for tests.
    #[cfg(test)]
    pub fn code(&self) -> u8 {
        self.code
    }

    /// Prints the message (if any) and returns the exit code.
    pub fn report(self) -> u8 {
        if let Some(message) = self.message {
            warn(message);
        }
        self.code
    }
}

impl From<registry_client::Error> for Failure {
    fn from(error: registry_client::Error) -> Self {
        Failure::new(describe(&error))
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            // The reader went away (`| head -1`): it has what it wanted, and there is
            // nobody left to tell. Like `rg`, not an error.
            Failure {
                message: None,
                code: 0,
            }
        } else {
            Failure::new(format!("cannot write the output: {error}"))
        }
    }
}

/// A client error as one line: the server's message and code for an error answer, the
/// whole cause chain for a transport error.
pub fn describe(error: &registry_client::Error) -> String {
    match error {
        registry_client::Error::Api {
            endpoint,
            status,
            code,
            message,
            ..
        } if !code.is_empty() => format!("{message} ({status} {code} from {endpoint})"),
        // regctl's only header is the token's.
        registry_client::Error::InvalidHeader { reason, .. } => {
            format!("cannot send the token (--token or REGISTRY_TOKEN): {reason}")
        }
        registry_client::Error::Transport { endpoint, source } if error.is_tls() => {
            // The innermost cause is rustls' reason (an unknown issuer, a name the
            // certificate is not for, the server's alert).
            format!(
                "TLS with {endpoint} failed: {} (see --cacert, --cert, --key)",
                innermost(source)
            )
        }
        registry_client::Error::Transport { endpoint, source } if source.is_timeout() => {
            format!("request to {endpoint} timed out")
        }
        registry_client::Error::Transport { endpoint, source } if source.is_connect() => {
            // The innermost cause says why (refused, unreachable, no such host); the
            // layers above it only repeat the URL.
            format!("cannot connect to {endpoint}: {}", innermost(source))
        }
        other => chain(other),
    }
}

/// The last of an error's sources (the error itself if it has none).
fn innermost<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause
}

/// `error` and its sources joined with `: `, skipping a source whose text its parent
/// already shows.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Prints `regctl: message` on stderr, on one line. A failing stderr is ignored: there
/// is nowhere left to report it.
pub fn warn(message: impl Display) {
    let message = message.to_string().replace('\n', " ");
    let _ = writeln!(io::stderr().lock(), "regctl: {message}");
}

/// Prints one line on stdout.
pub fn line(text: impl Display) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Prints `value` as indented JSON.
pub fn json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(format!("cannot encode JSON: {e}")))?;
    line(text)
}

/// Prints `value` as JSON on one line (for streams: one document per change).
pub fn json_line<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string(value)
        .map_err(|e| Failure::new(format!("cannot encode JSON: {e}")))?;
    line(text)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<(), Failure> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", render(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", render(row.iter().map(String::as_str).collect()))?;
    }
    out.flush()?;
    Ok(())
}

/// This machine's wall clock, in ms since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long ago a leader's wall-clock stamp (ms since the epoch) was, e.g. `3s ago`.
pub fn ago(stamp_ms: u64) -> String {
    match now_ms().checked_sub(stamp_ms) {
        Some(ms) => format!("{} ago", seconds(Duration::from_millis(ms))),
        None => "just now".to_owned(),
    }
}

/// How far in the future a wall-clock stamp is, e.g. `in 2s`.
pub fn from_now(stamp_ms: u64) -> String {
    match stamp_ms.checked_sub(now_ms()) {
        Some(ms) => format!("in {}", millis(ms)),
        None => "now".to_owned(),
    }
}

/// [`from_now`] to the second, for stamps hours or days away (`in 23h 59m 59s`).
pub fn from_now_seconds(stamp_ms: u64) -> String {
    match stamp_ms.checked_sub(now_ms()) {
        Some(ms) => format!("in {}", seconds(Duration::from_millis(ms))),
        None => "now".to_owned(),
    }
}

/// A duration rounded to whole seconds (`0s` under one), as `1m 5s`.
pub fn seconds(duration: Duration) -> String {
    api_spec::format_duration(Duration::from_secs(duration.as_secs()))
}

/// Milliseconds as a duration string (`1s 500ms`).
pub fn millis(ms: u64) -> String {
    api_spec::format_duration(Duration::from_millis(ms))
}

/// `text` fit for one line of a terminal: control characters (newlines, escapes) become
/// spaces and the ends are trimmed. For what a probed instance said (a check's output is
/// the start of whatever its health endpoint answered), which must neither break the
/// line-per-item output nor send escape sequences to the terminal.
pub fn one_line(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced.trim().to_owned()
}

/// `-` for a missing value.
pub fn or_dash(value: Option<impl Display>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_as_one_line_with_their_code() {
        let error = registry_client::Error::Api {
            endpoint: "h:1".into(),
            status: 404,
            code: "lease_not_found".into(),
            message: "no lease x".into(),
            conflict: None,
        };
        assert_eq!(
            describe(&error),
            "no lease x (404 lease_not_found from h:1)"
        );
    }

    #[test]
    fn acl_refusals_read_as_one_line_with_their_code() {
        let error = registry_client::Error::Api {
            endpoint: "h:1".into(),
            status: 403,
            code: "permission_denied".into(),
            message: "needs lock:write on job".into(),
            conflict: None,
        };
        assert_eq!(
            describe(&error),
            "needs lock:write on job (403 permission_denied from h:1)"
        );
    }

    #[test]
    fn a_token_that_cannot_be_sent_is_named_by_its_flag() {
        let error = registry_client::Error::InvalidHeader {
            name: "authorization".into(),
            reason: "bad",
        };
        assert_eq!(
            describe(&error),
            "cannot send the token (--token or REGISTRY_TOKEN): bad"
        );
    }

    #[test]
    fn probed_text_is_kept_to_one_line_without_escapes() {
        assert_eq!(
            one_line(" 503 Service Unavailable\r\n\x1b[31mdown\t"),
            "503 Service Unavailable   [31mdown"
        );
        assert_eq!(one_line("\n"), "");
        assert_eq!(one_line("ok"), "ok");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(seconds(Duration::from_millis(65_900)), "1m 5s");
        assert_eq!(millis(1500), "1s 500ms");
        assert_eq!(or_dash(None::<u64>), "-");
        let in_a_day = now_ms() + 86_400_000 + 900;
        assert_eq!(from_now_seconds(in_a_day), "in 1day");
        assert_eq!(from_now_seconds(1), "now");
    }
}
