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

/// When batches are due, on the monotonic clock: batch times are wall-clock names, but waiting
/// for them by the wall clock would stall the job for as long as the clock is stepped back (and
/// rush it when stepped forward). The wall clock is read once, at start; a later jump is
/// reported, never followed.
#[derive(Debug)]
pub struct Schedule {
    wall_ms: u64,
    started: std::time::Instant,
    /// The largest difference between the two clocks reported so far.
    reported_ms: i64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::new()
    }
}

impl Schedule {
    /// Jumps smaller than this pass unreported (NTP slews, scheduling noise).
    const JUMP_MS: i64 = 1000;

    /// Starts now.
    pub fn new() -> Self {
        Self {
            wall_ms: now_ms(),
            started: std::time::Instant::now(),
            reported_ms: 0,
        }
    }

    /// How long until `time_ms` (a batch time) is due; zero when it is past.
    pub fn until(&mut self, time_ms: u64) -> Duration {
        self.check_jump();
        let due = self.started + Duration::from_millis(time_ms.saturating_sub(self.wall_ms));
        due.saturating_duration_since(std::time::Instant::now())
    }

    /// Warns once per new jump of the wall clock away from the monotonic one.
    fn check_jump(&mut self) {
        let mono = self.started.elapsed().as_millis() as i64;
        let wall = now_ms() as i64 - self.wall_ms as i64;
        let drift = wall - mono;
        if (drift - self.reported_ms).abs() >= Self::JUMP_MS {
            tracing::warn!(
                jump_ms = drift - self.reported_ms,
                "the wall clock jumped; batches keep their schedule (their times are named from the clock at start)"
            );
            self.reported_ms = drift;
        }
    }
}

/// Notices a job that falls behind: batches start later and later after their time.
#[derive(Debug, Default)]
pub struct Lag {
    warned: Option<std::time::Instant>,
}

impl Lag {
    /// A delay this many intervals long (and at least [`Lag::MIN`]) is falling behind.
    pub const INTERVALS: u32 = 10;
    pub const MIN: Duration = Duration::from_secs(1);
    /// At most one warning this often.
    const EVERY: Duration = Duration::from_secs(30);

    /// What to say about a batch that started `delay` after its time, if it is falling behind.
    pub fn describe(delay: Duration, interval: Duration) -> Option<String> {
        let limit = (interval * Self::INTERVALS).max(Self::MIN);
        (delay > limit).then(|| {
            format!(
                "falling behind: batches start {:.1} s after their time ({} batch intervals); each batch takes longer than the {} ms interval, so give the job more workers or threads, or a longer spec.batchInterval",
                delay.as_secs_f64(),
                delay.as_millis() / interval.as_millis().max(1),
                interval.as_millis()
            )
        })
    }

    /// Warns (at most every 30 s) when a batch's scheduling `delay` says the job falls behind;
    /// returns the description while it does.
    pub fn observe(&mut self, delay: Duration, interval: Duration) -> Option<String> {
        let message = Self::describe(delay, interval)?;
        if self.warned.is_none_or(|at| at.elapsed() > Self::EVERY) {
            self.warned = Some(std::time::Instant::now());
            tracing::warn!("{message}");
        }
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_follows_the_monotonic_clock() {
        let mut s = Schedule::new();
        let now = s.wall_ms;
        assert_eq!(s.until(now.saturating_sub(5000)), Duration::ZERO);
        let wait = s.until(now + 300);
        assert!(
            wait <= Duration::from_millis(300) && wait > Duration::from_millis(200),
            "{wait:?}"
        );
        // As if the wall clock had been stepped back 90 s since start: the wait is unchanged.
        s.wall_ms += 90_000;
        s.reported_ms = -90_000;
        let wait = s.until(now + 90_300);
        assert!(wait <= Duration::from_millis(300), "{wait:?}");
    }

    #[test]
    fn lag_is_reported_past_ten_intervals_and_a_second() {
        let ms = Duration::from_millis;
        assert!(Lag::describe(ms(900), ms(10)).is_none(), "under a second");
        assert!(Lag::describe(ms(1500), ms(10)).is_some());
        assert!(
            Lag::describe(ms(9000), ms(1000)).is_none(),
            "under ten intervals"
        );
        let m = Lag::describe(ms(21_000), ms(10)).expect("behind");
        assert!(
            m.contains("21.0 s") && m.contains("2100 batch intervals"),
            "{m}"
        );
    }

    #[test]
    fn slides_align_to_batch_times() {
        let b = |k| BatchInfo::new(1_000_000, 1000, k);
        assert!(!b(1).is_multiple_of(2000));
        assert!(b(2).is_multiple_of(2000));
        assert_eq!(b(3).time_ms, 1_003_000);
    }
}
