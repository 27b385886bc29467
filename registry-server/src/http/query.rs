//! Query strings shared by the read routes: consistency and blocking parameters.

use std::time::Duration;

use api_spec::{DEFAULT_BLOCKING_WAIT, MAX_BLOCKING_WAIT};
use rand::Rng;

use super::error::ApiError;
use crate::app::{Block, Consistency};

/// The query string as `(key, value)` pairs; `?stale` alone gives `("stale", "")`.
pub(super) fn query_pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_argument(format!("malformed query string: {e}")))
}

/// Read parameters shared by both discovery GETs.
#[derive(Debug, Default)]
pub(super) struct ReadQuery {
    pub consistency: Option<Consistency>,
    pub index: Option<u64>,
    pub wait: Option<Duration>,
}

impl ReadQuery {
    /// Takes `stale`, `consistency`, `index` and `wait`; `false` for any other key.
    pub(super) fn take(&mut self, key: &str, value: &str) -> Result<bool, ApiError> {
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
                let wait = api_spec::parse_duration(value)
                    .map_err(|e| ApiError::invalid_duration(format!("wait: {e}")))?;
                self.wait = Some(wait)
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

pub(super) fn unknown_parameter(key: &str, allowed: &str) -> ApiError {
    ApiError::invalid_argument(format!(
        "unknown query parameter {key:?} (allowed: {allowed})"
    ))
}
