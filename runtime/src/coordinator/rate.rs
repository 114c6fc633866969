//! Backpressure: how many records per second the sources may hand the next batch, so batches
//! finish within the interval while a backlog drains. A PID controller over each batch's
//! processing rate and scheduling delay, as Spark Streaming's `PIDRateEstimator`
//! (`spark.streaming.backpressure.enabled`): the rate follows what the job managed to
//! process, pulled down further by the delay it has built up.
//!
//! Pure arithmetic: the coordinator feeds it finished batches and hands its rate to the
//! sources that can bound a batch (Kafka).

/// The settings (`spec.backpressure`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backpressure {
    /// Records per second for the batches before the controller has measured two.
    pub initial_rate: f64,
    /// It never asks for less, so a slow batch cannot starve the job.
    pub min_rate: f64,
}

impl Default for Backpressure {
    fn default() -> Self {
        Self {
            initial_rate: sluice_crds::defaults::BACKPRESSURE_INITIAL_RATE as f64,
            min_rate: sluice_crds::defaults::BACKPRESSURE_MIN_RATE as f64,
        }
    }
}

/// Gains as Spark's defaults: react to the present error, a fifth of the built-up delay.
const PROPORTIONAL: f64 = 1.0;
const INTEGRAL: f64 = 0.2;
const DERIVATIVE: f64 = 0.0;

/// The controller's memory between batches.
#[derive(Clone, Debug)]
pub struct RateEstimator {
    interval_ms: f64,
    min_rate: f64,
    latest_time_ms: Option<u64>,
    latest_rate: f64,
    latest_error: f64,
}

impl RateEstimator {
    pub fn new(interval_ms: u64, settings: &Backpressure) -> Self {
        Self {
            interval_ms: interval_ms.max(1) as f64,
            min_rate: settings.min_rate.max(1.0),
            latest_time_ms: None,
            latest_rate: settings.initial_rate,
            latest_error: 0.0,
        }
    }

    /// Feeds a finished batch; returns the new rate once there is one. The first batch only
    /// sets the starting point; batches without records or time, or out of order, change
    /// nothing.
    pub fn compute(
        &mut self,
        batch_time_ms: u64,
        records: u64,
        processing_ms: u64,
        scheduling_delay_ms: u64,
    ) -> Option<f64> {
        if records == 0 || processing_ms == 0 {
            return None;
        }
        let processing_rate = records as f64 / processing_ms as f64 * 1000.0;
        let Some(latest) = self.latest_time_ms else {
            self.latest_time_ms = Some(batch_time_ms);
            self.latest_rate = processing_rate;
            self.latest_error = 0.0;
            return None;
        };
        if batch_time_ms <= latest {
            return None;
        }
        let since_s = (batch_time_ms - latest) as f64 / 1000.0;
        let error = self.latest_rate - processing_rate;
        // The delay built up, as records at the present rate, spread over one interval.
        let historical_error = scheduling_delay_ms as f64 * processing_rate / self.interval_ms;
        let d_error = (error - self.latest_error) / since_s;
        let rate = (self.latest_rate
            - PROPORTIONAL * error
            - INTEGRAL * historical_error
            - DERIVATIVE * d_error)
            .max(self.min_rate);
        self.latest_time_ms = Some(batch_time_ms);
        self.latest_rate = rate;
        self.latest_error = error;
        Some(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimator() -> RateEstimator {
        RateEstimator::new(
            1000,
            &Backpressure {
                initial_rate: 1e6,
                min_rate: 100.0,
            },
        )
    }

    #[test]
    fn the_first_batch_only_sets_the_starting_point() {
        let mut e = estimator();
        assert_eq!(e.compute(1000, 10_000, 100, 0), None);
        // At the rate it asked for and no delay: it stays there.
        let rate = e.compute(2000, 10_000, 100, 0).expect("a rate");
        assert!((rate - 100_000.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn a_job_falling_behind_is_slowed_below_what_it_processes_until_the_delay_is_gone() {
        let mut e = estimator();
        // 50 000 records/s of processing, a delay of 4 intervals: below 50 000.
        e.compute(1000, 100_000, 2000, 0);
        let rate = e.compute(2000, 100_000, 2000, 4000).expect("a rate");
        assert!(rate < 50_000.0, "{rate}");
        // Delay gone, the same speed: back to what it processes.
        let rate = e.compute(3000, 50_000, 1000, 0).expect("a rate");
        assert!((rate - 50_000.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn never_below_the_minimum_and_empty_batches_change_nothing() {
        let mut e = estimator();
        e.compute(1000, 10, 1000, 0);
        assert_eq!(e.compute(2000, 0, 1000, 100_000), None);
        assert_eq!(e.compute(2000, 10, 0, 100_000), None);
        assert_eq!(e.compute(3000, 10, 1000, 100_000), Some(100.0));
        assert_eq!(e.compute(2500, 10, 1000, 0), None, "out of order");
    }
}
