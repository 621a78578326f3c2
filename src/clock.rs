//! The wall clock, read in one place.
//!
//! The engine never reads a clock: time is a parameter there, so replays
//! and tests decide what "now" is. The daemon, the CLI and the lab read the
//! real time through [`now_ms`], so a test or a simulation that needs
//! another clock has one function to look for.

use std::time::SystemTime;

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
