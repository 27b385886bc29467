//! Warnings about something a peer or a flood repeats many times a second (a wrong
//! cluster secret, a full connection cap): logged once per interval, not per event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning is logged at most.
pub const EVERY: Duration = Duration::from_secs(10);

/// When a warning was last let through. `std::sync::Mutex`: held only to compare and set.
#[derive(Debug)]
pub struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    pub const fn new() -> Self {
        Throttle(Mutex::new(None))
    }

    /// `true` at most once per [`EVERY`]: then log.
    pub fn ready(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn lets_one_through_per_interval() {
        let throttle = Throttle::new();
        assert!(throttle.ready());
        assert!(!throttle.ready());
    }
}
