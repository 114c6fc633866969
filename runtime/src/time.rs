//! Batch times. Batch `k` (from 1) covers the stream's interval `(zero + (k-1)·I, zero + k·I]`
//! and is named by its end time, as in Spark Streaming; windows and slides are aligned to it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Identity of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchInfo {
    /// 1 for the first batch of the job, counting across restarts.
    pub index: u64,
    /// The batch time: milliseconds since the Unix epoch at the end of the batch's interval.
    pub time_ms: u64,
    /// The batch interval in milliseconds.
    pub interval_ms: u64,
}

impl BatchInfo {
    /// The batch `index` of a job whose clock started at `zero_ms`.
    pub fn new(zero_ms: u64, interval_ms: u64, index: u64) -> Self {
        Self {
            index,
            time_ms: zero_ms + index * interval_ms,
            interval_ms,
        }
    }

    /// Milliseconds of stream time since the job's zero time.
    pub fn offset_ms(&self) -> u64 {
        self.index * self.interval_ms
    }

    /// Whether a stream that emits every `slide_ms` emits at this batch.
    pub fn is_multiple_of(&self, slide_ms: u64) -> bool {
        slide_ms == 0 || self.offset_ms().is_multiple_of(slide_ms)
    }

    /// The batch time as RFC 3339 text with milliseconds.
    pub fn display_time(&self) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(self.time_ms);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides_align_to_batch_times() {
        let b = |k| BatchInfo::new(1_000_000, 1000, k);
        assert!(!b(1).is_multiple_of(2000));
        assert!(b(2).is_multiple_of(2000));
        assert_eq!(b(3).time_ms, 1_003_000);
    }
}
