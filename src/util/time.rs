//! Record times: seconds since the epoch on disk, RFC 3339 for people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, for records.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A record time as RFC 3339 in UTC, e.g. `2026-11-26T03:08:46Z`.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_record_times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_126_526), "2025-11-26T03:08:46Z");
        assert!(now_unix() > 1_700_000_000);
    }
}
