//! Event time as the engine writes it: milliseconds since the Unix epoch,
//! shown as RFC 3339 in reports, baselines, alerts and the API.

/// RFC 3339 in UTC with milliseconds (`2025-12-14T10:00:00.123Z`); the epoch
/// for a time chrono cannot represent.
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
