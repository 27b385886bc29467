//! The one query-string parser every read route uses: consistency and blocking
//! parameters, plus whatever a route adds of its own (discovery filters).

use std::time::Duration;

use api_spec::{DEFAULT_BLOCKING_WAIT, MAX_BLOCKING_WAIT};
use rand::Rng;

use super::error::ApiError;
use crate::app::{Block, Consistency};

/// Whether a read route takes blocking parameters (`index`, `wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blocking {
    Yes,
    No,
}

/// Read parameters common to every read route.
#[derive(Debug, Default)]
pub(super) struct ReadQuery {
    consistency: Option<Consistency>,
    index: Option<u64>,
    wait: Option<Duration>,
}

/// Parses a read route's query string. `own(key, value)` takes the route's own
/// parameters and answers `false` for a key it does not know; `own_names` lists them for
/// the error that names every allowed parameter.
pub(super) fn parse(
    raw: Option<String>,
    blocking: Blocking,
    own_names: &[&str],
    mut own: impl FnMut(&str, String) -> Result<bool, ApiError>,
) -> Result<ReadQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_argument(format!("malformed query string: {e}")))?;
    let mut query = ReadQuery::default();
    for (key, value) in pairs {
        let taken = match key.as_str() {
            "index" | "wait" if blocking == Blocking::No => false,
            _ => query.take(&key, &value)?,
        };
        if !taken && !own(&key, value)? {
            let mut allowed: Vec<&str> = own_names.to_vec();
            if blocking == Blocking::Yes {
                allowed.extend(["index", "wait"]);
            }
            allowed.extend(["stale", "consistency"]);
            return Err(ApiError::invalid_argument(format!(
                "unknown query parameter {key:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(query)
}

/// For routes that take nothing of their own.
pub(super) fn none(_: &str, _: String) -> Result<bool, ApiError> {
    Ok(false)
}

impl ReadQuery {
    /// Takes `stale`, `consistency`, `index` and `wait`; `false` for any other key.
    fn take(&mut self, key: &str, value: &str) -> Result<bool, ApiError> {
        match key {
            "stale" => {
                self.consistency = Some(match value {
                    "" | "true" | "1" => Consistency::Stale,
                    "false" | "0" => Consistency::Linearizable,
                    v => {
                        return Err(ApiError::invalid_argument(format!(
                            "`stale` takes no value, not {v:?}"
                        )))
                    }
                })
            }
            "consistency" => {
                self.consistency = Some(match value {
                    "stale" => Consistency::Stale,
                    "linearizable" => Consistency::Linearizable,
                    v => {
                        return Err(ApiError::invalid_argument(format!(
                            "`consistency` is `linearizable` or `stale`, not {v:?}"
                        )))
                    }
                })
            }
            "index" => {
                self.index = Some(value.parse().map_err(|_| {
                    ApiError::invalid_argument(format!(
                        "`index` is a log index (a number), not {value:?}"
                    ))
                })?)
            }
            "wait" => {
                self.wait = Some(api_spec::rules::duration(
                    "wait",
                    value,
                    api_spec::rules::BLOCKING_WAIT,
                )?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub(super) fn consistency(&self) -> Consistency {
        self.consistency.unwrap_or(Consistency::Linearizable)
    }

    /// A blocking query when `index` is given: wait (default 5m, capped at 10m) plus a
    /// random jitter of up to 1/16th, so watchers woken together do not return together.
    pub(super) fn block(&self) -> Option<Block> {
        let index = self.index?;
        let wait = self
            .wait
            .unwrap_or(DEFAULT_BLOCKING_WAIT)
            .min(MAX_BLOCKING_WAIT);
        let jitter_ms = (wait.as_millis() / 16) as u64;
        let jitter = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        Some(Block {
            index,
            wait: wait + jitter,
        })
    }
}
