//! How many workers a job needs (`spec.workers.autoscale`), judged from the figures of its last
//! batches as its master reports them: pure arithmetic, fed by the reconciler, which applies a
//! change through the scale subresource.
//!
//! The rule. Each look takes the last [`WINDOW`] batches that ran on the present workers and
//! measures the records one worker processes per second of processing time (going up, without
//! the window's slowest batch: one stall is not a slower worker), the rate records
//! arrive at (read, plus what the backlog grew by) and what waits (the sources' backlog, plus
//! the scheduling delay's worth of input). Partitions are dealt out whole, so a batch takes as
//! long as its busiest worker, who runs `ceil(partitions / workers)` of them: 3 workers over 4
//! partitions are no faster than 2 (see [`effective_workers`]). The job needs the workers that
//! process the arrival rate at `targetUtilization` of the interval — and, when it is behind (what waits would not
//! drain within [`BEHIND_INTERVALS`] intervals and is not shrinking), enough to also drain the
//! waiting records within [`DRAIN_INTERVALS`] at full capacity (draining may take the headroom
//! above the target, for a while), so that one step is enough. A need within [`TOLERANCE`] of the
//! present count changes nothing.
//!
//! Up fast: the smallest need seen over `scaleUpAfter` (0s: this look's). Down slowly: only when
//! every look over `scaleDownAfter` since the last change found fewer enough, to the largest
//! need of its newer half, sized with the best capacity measured lately ([`CAPACITY_MEMORY`])
//! but never below what the processing time measured now, shared by fewer workers (all but
//! its fixed cost, [`fixed_cost`]), keeps within the tolerance; so a steady load never
//! oscillates. Never more workers than partitions
//! (they would have nothing to run) nor outside `minReplicas..maxReplicas`; a need past them is
//! reported as a [`Limit`]. Unless `maxParallelism` allows more partitions: a step up past the
//! partitions then raises them, once and straight to `maxParallelism` ([`Verdict::Reshard`]:
//! the job restarts to re-shard its state, so it should happen once in its life, not at every
//! step), and the workers to what the need calls for over them. Partitions are never lowered:
//! idle partitions cost next to nothing, a restart does not.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use sluice_crds::resource::AutoscaleSpec;
use sluice_crds::{format_duration, parse_duration};

/// Batches a look judges: enough to smooth one slow batch (a snapshot), few enough to see a
/// load step within seconds.
pub const WINDOW: usize = 5;
/// Batches on the present workers before a look decides anything.
pub const MIN_BATCHES: usize = 3;
/// No change while the need stays within this share of the present count's capacity (the
/// Horizontal Pod Autoscaler's default tolerance).
pub const TOLERANCE: f64 = 0.1;
/// A job is behind when what waits would take longer than this many batch intervals to drain
/// at its spare capacity.
pub const BEHIND_INTERVALS: f64 = 10.0;
/// A job behind is sized to drain what waits within this many batch intervals.
pub const DRAIN_INTERVALS: f64 = 5.0;
/// How long a change of workers may take to show in the batches (pods starting, registering)
/// before looks judge the batches of whatever workers run.
pub const SETTLE: Duration = Duration::from_secs(90);
/// How long a measured capacity per worker is remembered. A batch's fixed cost weighs more
/// in small batches, so a light load understates what a worker can do; sizing down uses the
/// best capacity measured lately, so that one step down reaches the count that keeps up.
pub const CAPACITY_MEMORY: Duration = Duration::from_secs(600);

pub const DEFAULT_MIN_REPLICAS: u32 = 1;
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
pub const DEFAULT_SCALE_UP_AFTER: Duration = Duration::ZERO;
pub const DEFAULT_SCALE_DOWN_AFTER: Duration = Duration::from_secs(300);

/// `spec.workers.autoscale`, checked and with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub min: u32,
    pub max: u32,
    /// The most partitions the job may be raised to.
    pub max_parallelism: Option<u32>,
    pub target: f64,
    pub up_after: Duration,
    pub down_after: Duration,
}

impl Settings {
    /// The settings of `spec`, or what is wrong with it, named by its field path.
    pub fn from_spec(spec: &AutoscaleSpec) -> Result<Self, String> {
        const PATH: &str = "spec.workers.autoscale";
        let min = spec
            .min_replicas
            .map_or(Ok(DEFAULT_MIN_REPLICAS), u32::try_from)
            .ok()
            .filter(|m| *m >= 1)
            .ok_or_else(|| format!("{PATH}.minReplicas: at least 1"))?;
        let max = u32::try_from(spec.max_replicas)
            .ok()
            .filter(|m| *m >= 1)
            .ok_or_else(|| format!("{PATH}.maxReplicas: at least 1"))?;
        if min > max {
            return Err(format!(
                "{PATH}: minReplicas {min} exceeds maxReplicas {max}; lower minReplicas or raise maxReplicas"
            ));
        }
        let max_parallelism = spec
            .max_parallelism
            .map(|m| {
                u32::try_from(m)
                    .ok()
                    .filter(|m| (1..=sluice_crds::MAX_PARALLELISM).contains(m))
                    .ok_or_else(|| {
                        format!(
                            "{PATH}.maxParallelism: {m} is out of range; use 1 to {}",
                            sluice_crds::MAX_PARALLELISM
                        )
                    })
            })
            .transpose()?;
        let target = spec
            .target_utilization
            .unwrap_or(DEFAULT_TARGET_UTILIZATION);
        if !(0.1..=0.95).contains(&target) {
            return Err(format!(
                "{PATH}.targetUtilization: {target} is outside 0.1..0.95 (the share of each batch interval spent processing, such as 0.7)"
            ));
        }
        let duration = |field: &str, text: Option<&str>, default: Duration| match text {
            None => Ok(default),
            Some(t) => parse_duration(t).map_err(|m| format!("{PATH}.{field}: {m}")),
        };
        Ok(Self {
            min,
            max,
            max_parallelism,
            target,
            up_after: duration(
                "scaleUpAfter",
                spec.scale_up_after.as_deref(),
                DEFAULT_SCALE_UP_AFTER,
            )?,
            down_after: duration(
                "scaleDownAfter",
                spec.scale_down_after.as_deref(),
                DEFAULT_SCALE_DOWN_AFTER,
            )?,
        })
    }
}

/// One committed batch, as the master reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub records: u64,
    pub processing_ms: u64,
    pub scheduling_delay_ms: u64,
    /// Records waiting in the sources after it was planned, where they can count them.
    pub backlog: Option<u64>,
    /// Workers that ran a partition of it.
    pub workers: u32,
    pub replay: bool,
}

/// What one look sees.
#[derive(Clone, Copy, Debug)]
pub struct Look<'a> {
    /// Now, in ms of any clock that does not go back.
    pub at_ms: u64,
    /// `spec.workers.replicas` as it stands.
    pub replicas: u32,
    pub partitions: u32,
    pub interval_ms: u64,
    /// The newest batches, oldest first.
    pub batches: &'a [Batch],
}

/// What a look measured over its batches.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// Batches judged, and the workers they ran on.
    pub batches: usize,
    pub workers: u32,
    /// Mean processing time, ms.
    pub processing_ms: f64,
    /// Processing time / batch interval.
    pub utilization: f64,
    /// Records per second arriving at the sources: over the window, or, sizing up, over the
    /// newest batches when they say more.
    pub arrival: f64,
    /// Records per second one worker processes, when the batches had records.
    pub per_worker: Option<f64>,
    /// Workers the batches' partitions kept busy, as a count of evenly loaded workers (see
    /// [`effective_workers`]).
    pub effective: f64,
    /// The sources' backlog after the newest batch, where they count it.
    pub backlog: Option<u64>,
    /// Records waiting: the backlog and the scheduling delay's worth of input.
    pub waiting: f64,
    pub scheduling_delay_ms: u64,
    /// What waits would not drain soon at the present capacity.
    pub behind: bool,
    /// Evenly loaded workers needed at the target (see [`effective_workers`]).
    pub need: f64,
    /// Workers needed at the target over the present partitions, before bounds.
    pub needed: u32,
}

/// A need the bounds do not let the autoscaler meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// More workers than partitions would have nothing to run.
    Partitions {
        needed: u32,
        partitions: u32,
        /// `maxParallelism`, when set (the partitions are then raised up to it).
        max_parallelism: Option<u32>,
    },
    MaxReplicas {
        needed: u32,
        max: u32,
    },
}

impl Limit {
    /// For the ScalingLimited condition and its event.
    pub fn message(&self) -> String {
        match *self {
            Limit::Partitions {
                needed,
                partitions,
                max_parallelism: Some(most),
            } if most <= partitions => format!(
                "the job needs {needed} workers to keep up, but its {partitions} partitions give work to {partitions} only, and spec.workers.autoscale.maxParallelism is {most}: raise maxParallelism to let the operator raise spec.parallelism (its state is re-sharded, with a restart; see docs/upgrades.md)"
            ),
            Limit::Partitions {
                needed, partitions, ..
            } => format!(
                "the job needs {needed} workers to keep up, but spec.parallelism {partitions} gives work to {partitions} only: raise spec.parallelism, or set spec.workers.autoscale.maxParallelism to let the operator raise it (its state is re-sharded, with a restart; see docs/upgrades.md)"
            ),
            Limit::MaxReplicas { needed, max } => format!(
                "the job needs {needed} workers to keep up; spec.workers.autoscale.maxReplicas is {max}"
            ),
        }
    }
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Nothing to judge by yet.
    Wait(String),
    /// The present count stays.
    Keep(String),
    /// Set `replicas` to `to`; `why` is the event's message.
    Scale { to: u32, why: String },
    /// Set `spec.parallelism` to `partitions` (a restart re-shards the state) and `replicas` to
    /// `to`.
    Reshard {
        partitions: u32,
        to: u32,
        why: String,
    },
}

/// A look's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub estimate: Option<Estimate>,
    /// Workers the look found right, within the bounds.
    pub recommended: Option<u32>,
    pub limit: Option<Limit>,
}

/// What the autoscaler remembers of a job between looks: the counts it recommended since
/// `replicas` last changed.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    replicas: Option<u32>,
    since_ms: u64,
    seen: VecDeque<Seen>,
    /// What recent looks measured, across changes.
    measured: VecDeque<Measured>,
}

/// What one look since the last change found.
#[derive(Clone, Copy, Debug)]
struct Seen {
    at_ms: u64,
    recommended: u32,
    /// Mean processing time of its batches, seconds, and the evenly loaded workers that ran
    /// them: what a step down is predicted from, with the fixed cost fitted when it is judged.
    processing: f64,
    effective: f64,
}

/// One look's measure of the workers' speed.
#[derive(Clone, Copy, Debug)]
struct Measured {
    at_ms: u64,
    /// Records per second one worker processes.
    per_worker: f64,
    /// Records a batch gives each evenly loaded worker, and the seconds a batch took.
    load: f64,
    processing: f64,
}

/// The workers `look` calls for, remembered in `memory` (see the module's rule).
pub fn decide(settings: &Settings, look: &Look<'_>, memory: &mut Memory) -> Decision {
    let replicas = look.replicas;
    if memory.replicas != Some(replicas) {
        memory.replicas = Some(replicas);
        memory.since_ms = look.at_ms;
        memory.seen.clear();
    }
    while memory
        .measured
        .front()
        .is_some_and(|m| look.at_ms.saturating_sub(m.at_ms) > millis(CAPACITY_MEMORY))
    {
        memory.measured.pop_front();
    }
    let bounded = replicas.clamp(settings.min, settings.max);
    if bounded != replicas {
        let (edge, value) = if replicas < settings.min {
            ("below minReplicas", settings.min)
        } else {
            ("above maxReplicas", settings.max)
        };
        return Decision {
            verdict: Verdict::Scale {
                to: bounded,
                why: format!("{replicas} → {bounded}: {replicas} workers is {edge} {value}"),
            },
            estimate: None,
            recommended: None,
            limit: None,
        };
    }
    let settled = look.at_ms.saturating_sub(memory.since_ms) >= millis(SETTLE);
    let best = memory
        .measured
        .iter()
        .map(|m| m.per_worker)
        .reduce(f64::max);
    let estimate = match estimate(look, settings.target, settled, best) {
        Ok(e) => e,
        Err(why) => {
            return Decision {
                verdict: Verdict::Wait(why),
                estimate: None,
                recommended: None,
                limit: None,
            };
        }
    };
    // Workers past the partitions have nothing to run; `minReplicas` is the user's to set.
    // A need past the partitions, where `maxParallelism` allows more, is met over that many.
    let most_partitions = settings
        .max_parallelism
        .map_or(look.partitions, |m| m.max(look.partitions));
    let (partitions, needed) =
        if estimate.needed > look.partitions && most_partitions > look.partitions {
            (
                most_partitions,
                workers_for(estimate.need, most_partitions).max(1),
            )
        } else {
            (look.partitions, estimate.needed)
        };
    let useful = settings.max.min(partitions.max(settings.min));
    let recommended = needed.clamp(settings.min, useful);
    let limit = (needed > useful).then_some({
        if useful < settings.max {
            Limit::Partitions {
                needed,
                partitions,
                max_parallelism: settings.max_parallelism,
            }
        } else {
            Limit::MaxReplicas {
                needed,
                max: settings.max,
            }
        }
    });
    let processing = estimate.processing_ms / 1000.0;
    if let Some(c) = estimate.per_worker {
        memory.measured.push_back(Measured {
            at_ms: look.at_ms,
            per_worker: c,
            load: c * processing,
            processing,
        });
    }
    let fixed = fixed_cost(&memory.measured);
    let keep_for = settings.up_after.max(settings.down_after);
    memory.seen.push_back(Seen {
        at_ms: look.at_ms,
        recommended,
        processing,
        effective: estimate.effective,
    });
    while memory
        .seen
        .front()
        .is_some_and(|s| look.at_ms.saturating_sub(s.at_ms) > millis(keep_for))
    {
        memory.seen.pop_front();
    }
    let observed_for = Duration::from_millis(look.at_ms.saturating_sub(memory.since_ms));
    let within = |window: Duration| {
        memory
            .seen
            .iter()
            .filter(move |s| look.at_ms.saturating_sub(s.at_ms) <= millis(window))
            .map(|s| s.recommended)
    };
    let verdict = if recommended > replicas {
        let to = within(settings.up_after).min().unwrap_or(recommended);
        if observed_for < settings.up_after || to <= replicas {
            Verdict::Keep(format!(
                "needs {recommended} workers; waiting until that has held for scaleUpAfter {}",
                format_duration(settings.up_after)
            ))
        } else if to > look.partitions {
            let head = format!(
                "{replicas} → {to} workers and {} → {partitions} partitions (spec.parallelism; the job restarts to re-shard its state)",
                look.partitions
            );
            Verdict::Reshard {
                partitions,
                to,
                why: up_reason(&head, &estimate, look.interval_ms),
            }
        } else {
            Verdict::Scale {
                to,
                why: up_reason(&format!("{replicas} → {to}"), &estimate, look.interval_ms),
            }
        }
    } else if recommended < replicas {
        // Every look over scaleDownAfter found fewer enough; the count is the largest need
        // of its newer half, so that a window that began with the load still falling goes
        // to the new load's count in one step.
        let all_fewer = within(settings.down_after).max().unwrap_or(replicas) < replicas;
        let newer = settings.down_after / 2;
        // Seconds of work a batch gives one evenly loaded worker, beyond the fixed cost.
        let works: Vec<f64> = memory
            .seen
            .iter()
            .filter(|s| look.at_ms.saturating_sub(s.at_ms) <= millis(newer))
            .map(|s| (s.processing - fixed).max(0.0) * s.effective)
            .collect();
        // The best capacity measured may be more than these workers get now (cores shared
        // with neighbours): a step down also keeps the processing time measured, its fixed
        // cost as it is and the rest shared by fewer workers, under the target (the tolerance
        // above it is the gap to a step back up). Over the newer half's looks on average: one
        // slow batch (a snapshot) in a look's window must not hold the count up.
        let work = works.iter().sum::<f64>() / works.len().max(1) as f64;
        let interval = look.interval_ms.max(1) as f64 / 1000.0;
        let budget = settings.target * interval - fixed;
        let floor = if budget > 0.0 {
            work / budget
        } else {
            estimate.effective
        };
        let to = within(newer)
            .max()
            .unwrap_or(replicas)
            .max(workers_for(floor, look.partitions));
        let predicted = (fixed + work / effective_workers(look.partitions, to)) / interval;
        if observed_for < settings.down_after || !all_fewer || to >= replicas {
            Verdict::Keep(format!(
                "{recommended} workers would do; waiting until that has held for scaleDownAfter {} (held {})",
                format_duration(settings.down_after),
                format_duration(Duration::from_secs(observed_for.as_secs()))
            ))
        } else {
            Verdict::Scale {
                to,
                why: down_reason(
                    replicas,
                    to,
                    &estimate,
                    settings,
                    Prediction {
                        utilization: predicted,
                        over: newer,
                        fixed,
                    },
                    look.interval_ms,
                ),
            }
        }
    } else {
        Verdict::Keep(format!(
            "{replicas} workers keep up: processing {} per {} batch (utilization {:.2}, target {:.2})",
            seconds(estimate.processing_ms),
            seconds(look.interval_ms as f64),
            estimate.utilization,
            settings.target
        ))
    };
    Decision {
        verdict,
        estimate: Some(estimate),
        recommended: Some(recommended),
        limit,
    }
}

/// Measures the last batches on the present workers (or, once `settled`, on whatever workers
/// ran the newest batch); a message when there is not enough to judge by.
fn estimate(
    look: &Look<'_>,
    target: f64,
    settled: bool,
    best_per_worker: Option<f64>,
) -> Result<Estimate, String> {
    let expected = look.replicas.min(look.partitions.max(1)).max(1);
    let live: Vec<&Batch> = look.batches.iter().filter(|b| !b.replay).collect();
    let Some(newest) = live.last() else {
        return Err("no batch figures from the master yet".into());
    };
    let workers = if newest.workers == expected || !settled {
        expected
    } else {
        newest.workers.max(1)
    };
    let mut window: Vec<&Batch> = live
        .iter()
        .rev()
        .take_while(|b| b.workers.max(1) == workers)
        .take(WINDOW)
        .copied()
        .collect();
    window.reverse();
    if window.len() < MIN_BATCHES {
        return Err(format!(
            "waiting for {MIN_BATCHES} batches on {workers} workers ({} so far)",
            window.len()
        ));
    }
    let n = window.len() as f64;
    let interval = look.interval_ms.max(1) as f64 / 1000.0;
    let processing: f64 = window.iter().map(|b| b.processing_ms as f64 / 1000.0).sum();
    let newest = window[window.len() - 1];
    let arrival = arrival_rate(&window, interval);
    // A load step shows first in the newest batches: sizing up follows the newest that say
    // more, so one change is enough; sizing down follows the whole window.
    let arrival_now = (1..window.len())
        .map(|k| arrival_rate(&window[window.len() - k..], interval))
        .fold(arrival, f64::max);
    // What waits: the sources' backlog, and the input of the batch time the job is behind.
    let delay = newest.scheduling_delay_ms as f64 / 1000.0;
    let waiting = newest.backlog.unwrap_or(0) as f64 + arrival * delay;
    let effective = effective_workers(look.partitions, workers);
    let capacity = |skip: Option<usize>| {
        let (records, processing) = window
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .fold((0u64, 0.0f64), |(r, p), (_, b)| {
                (r + b.records, p + b.processing_ms as f64 / 1000.0)
            });
        (records > 0 && processing > 0.0).then(|| records as f64 / (processing * effective))
    };
    let per_worker = capacity(None);
    // Whether to go up (or the job is behind) is judged on a capacity without the window's
    // slowest batch once there are enough others: one batch the machine stalled (or a slow
    // snapshot write) would read as a worker a third slower, and the backlog it left as more
    // input; an overload slows every batch, not one. How far to go, and going down, count
    // every batch: the lower figure sizes the count.
    let slowest = (window.len() > MIN_BATCHES)
        .then(|| (0..window.len()).max_by_key(|&i| (window[i].processing_ms, std::cmp::Reverse(i))))
        .flatten();
    let per_worker_up = capacity(slowest).or(per_worker);
    // What waited at the window's first batch: a queue that shrinks over the window is being
    // drained by the workers there are (just after a step up, say), and needs none more.
    let first = window[0];
    let waited =
        first.backlog.unwrap_or(0) as f64 + arrival * first.scheduling_delay_ms as f64 / 1000.0;
    let draining = waiting < waited * 0.9;
    let behind = match per_worker_up {
        Some(c) => {
            let spare = c * effective - arrival;
            waiting > 0.0
                && !draining
                && (spare <= 0.0 || waiting / spare > BEHIND_INTERVALS * interval)
        }
        None => false,
    };
    let mut input = arrival;
    let mut need = f64::from(workers);
    let needed = match (per_worker, per_worker_up) {
        (Some(c), Some(up)) => {
            let drain = if behind {
                waiting / (DRAIN_INTERVALS * interval)
            } else {
                0.0
            };
            let ratio_up = (arrival + drain) / (up * effective * target);
            let ratio = (arrival + drain) / (c * effective * target);
            need = if behind || ratio_up > 1.0 + TOLERANCE {
                input = arrival_now;
                // The input at the target, and what waits on top within the drain's
                // intervals; draining is for a while, so it may take the headroom above the
                // target too (sized at the target, a step with a backlog overshoots).
                // Sized on every batch: an overload slows them all, and a step sized on the
                // faster figure falls short and takes a second one.
                (arrival_now / (c * target)).max((arrival_now + drain) / c)
            } else if ratio < 1.0 - TOLERANCE {
                arrival / (best_per_worker.map_or(c, |b| b.max(c)) * target)
            } else {
                effective
            };
            workers_for(need, look.partitions).max(1)
        }
        // No records processed: an idle job needs the fewest; one with input but no time
        // measured cannot be judged, so it stays.
        _ if arrival == 0.0 && waiting == 0.0 => {
            need = 0.0;
            0
        }
        _ => workers,
    };
    Ok(Estimate {
        batches: window.len(),
        workers,
        processing_ms: processing * 1000.0 / n,
        utilization: processing / (n * interval),
        arrival: input,
        per_worker,
        effective,
        backlog: newest.backlog,
        waiting,
        scheduling_delay_ms: newest.scheduling_delay_ms,
        behind,
        need,
        needed,
    })
}

/// How many evenly loaded workers `workers` are worth over `partitions`: a batch lasts as long
/// as its busiest worker, who runs `ceil(partitions / workers)` of them (the master deals
/// them out evenly, and the sources spread records evenly over them), so the count is
/// `partitions / ceil(partitions / workers)`: 4 partitions on 3 workers are worth 2.
pub fn effective_workers(partitions: u32, workers: u32) -> f64 {
    let workers = workers.max(1);
    if partitions == 0 {
        return f64::from(workers);
    }
    if workers >= partitions {
        return f64::from(partitions);
    }
    f64::from(partitions) / f64::from(partitions.div_ceil(workers))
}

/// The fewest workers worth `needed` evenly loaded ones over `partitions` (see
/// [`effective_workers`]); past the partitions, as many as needed (a need the bounds report).
pub fn workers_for(needed: f64, partitions: u32) -> u32 {
    // Float noise must not turn an exact fit into one more worker.
    let needed = needed - 1e-9;
    if needed <= 0.0 {
        return 0;
    }
    if needed > f64::from(partitions) {
        return needed.ceil().min(f64::from(u32::MAX)) as u32;
    }
    (1..=partitions)
        .find(|w| effective_workers(partitions, *w) >= needed)
        .unwrap_or(partitions)
}

/// Records per second arriving at the sources over `window` (oldest first, at least one batch).
fn arrival_rate(window: &[&Batch], interval: f64) -> f64 {
    let n = window.len() as f64;
    let (first, newest) = (window[0], window[window.len() - 1]);
    match (first.backlog, newest.backlog) {
        // Sources that take what has arrived when a batch is planned (Kafka): the records
        // between the first batch's plan and the newest's, read or left waiting, over the
        // time between the two plans.
        // (Over a few batches: one plan's moment against the next is noise.)
        (Some(b0), Some(b1)) if window.len() >= MIN_BATCHES => {
            let read_after: u64 = window.iter().skip(1).map(|b| b.records).sum();
            let span = (n - 1.0) * interval
                + (newest.scheduling_delay_ms as f64 - first.scheduling_delay_ms as f64) / 1000.0;
            ((read_after as f64 + b1 as f64 - b0 as f64) / span.max(interval)).max(0.0)
        }
        // Sources that cut their input by batch time (a generator): a batch holds its
        // interval's records however late it runs.
        _ => window.iter().map(|b| b.records).sum::<u64>() as f64 / (n * interval),
    }
}

/// `head` says the change (`2 → 5`).
fn up_reason(head: &str, e: &Estimate, interval_ms: u64) -> String {
    let mut why = format!(
        "{head}: processing {} per {} batch over the last {} batches (utilization {:.2}), input {}/s",
        seconds(e.processing_ms),
        seconds(interval_ms as f64),
        e.batches,
        e.utilization,
        count(e.arrival)
    );
    if let Some(b) = e.backlog {
        let _ = write!(why, ", backlog {} records", count(b as f64));
    }
    if e.scheduling_delay_ms > 0 {
        let _ = write!(
            why,
            ", scheduling delay {}",
            seconds(e.scheduling_delay_ms as f64)
        );
    }
    why
}

/// What a step down expects of the fewer workers.
struct Prediction {
    utilization: f64,
    /// The looks it is judged from.
    over: Duration,
    /// A batch's fixed cost, seconds.
    fixed: f64,
}

fn down_reason(
    from: u32,
    to: u32,
    e: &Estimate,
    s: &Settings,
    p: Prediction,
    interval_ms: u64,
) -> String {
    let mut why = format!(
        "{from} → {to}: processing {} per {} batch over the last {} batches (utilization {:.2}), input {}/s; {} enough at every look for {} (predicted utilization {:.2} over the last {}, target {:.2}",
        seconds(e.processing_ms),
        seconds(interval_ms as f64),
        e.batches,
        e.utilization,
        count(e.arrival),
        if to == 1 {
            "1 worker was".to_string()
        } else {
            format!("{to} workers were")
        },
        format_duration(s.down_after),
        p.utilization,
        format_duration(p.over),
        s.target
    );
    if p.fixed > 0.0 {
        let _ = write!(
            why,
            "; {} of each batch is fixed cost",
            seconds(p.fixed * 1000.0)
        );
    }
    why.push(')');
    why
}

/// The part of a batch's processing time that does not shrink with its records, fitted over
/// recent looks (processing time against records per worker) when their loads differ enough
/// to tell; otherwise none, which errs towards more workers. A batch's fixed cost (planning,
/// the commit, a snapshot's share) weighs on the workers that remain after a step down as much
/// as on the many: without it, a job fast enough on one worker would step down one at a time.
fn fixed_cost(measured: &VecDeque<Measured>) -> f64 {
    let n = measured.len() as f64;
    let (low, high) = measured.iter().fold((f64::MAX, 0.0f64), |(l, h), m| {
        (l.min(m.load), h.max(m.load))
    });
    if measured.len() < 2 || high < 2.0 * low {
        return 0.0;
    }
    let mean_x = measured.iter().map(|m| m.load).sum::<f64>() / n;
    let mean_y = measured.iter().map(|m| m.processing).sum::<f64>() / n;
    let (covariance, variance) = measured.iter().fold((0.0, 0.0), |(c, v), m| {
        let dx = m.load - mean_x;
        (c + dx * (m.processing - mean_y), v + dx * dx)
    });
    let slope = covariance / variance;
    if slope.is_nan() || slope <= 0.0 {
        return 0.0;
    }
    // Never most of the fastest batch: a fit over noisy looks must not promise that fewer
    // workers cost next to nothing.
    let fastest = measured
        .iter()
        .map(|m| m.processing)
        .fold(f64::MAX, f64::min);
    (mean_y - slope * mean_x).clamp(0.0, 0.8 * fastest)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `ms` for people, as the status's columns show durations.
fn seconds(ms: f64) -> String {
    crate::status::short_duration(ms.round() as u64)
}

/// A count for people: `950`, `12.5k`, `3.1M`.
fn count(n: f64) -> String {
    if n < 1000.0 {
        format!("{n:.0}")
    } else if n < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{:.1}M", n / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: u32, max: u32, up: u64, down: u64) -> Settings {
        Settings {
            min,
            max,
            max_parallelism: None,
            target: 0.7,
            up_after: Duration::from_secs(up),
            down_after: Duration::from_secs(down),
        }
    }

    /// The utilization a step down's reason predicts.
    fn predicted(why: &str) -> f64 {
        why.split("predicted utilization ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("no prediction in {why}"))
    }

    /// Deterministic noise in `1 ± amplitude` (a linear congruential generator).
    struct Noise(u64);

    impl Noise {
        fn next(&mut self, amplitude: f64) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
            1.0 + amplitude * (2.0 * unit - 1.0)
        }
    }

    /// How a simulated source hands records to batches.
    #[derive(Clone, Copy, PartialEq)]
    enum Input {
        /// A batch holds its interval's records, however late it runs (a generator).
        ByBatchTime,
        /// A batch takes what has arrived when it is planned, at most `cap` (Kafka with
        /// backpressure's bound); the rest is the backlog.
        Arrived { cap: Option<f64> },
    }

    /// A micro-batch job in simulated time, with the autoscaler in the loop: batches every
    /// `interval`, each taking a fixed cost plus its records over the capacity of its workers,
    /// with noise, one slow batch in ten (a snapshot); the operator looking every 2 s; new
    /// workers running batches 4 s after a change.
    struct Sim {
        interval: f64,
        per_worker: f64,
        fixed: f64,
        /// Each worker beyond the first makes every worker this much slower (cores shared
        /// with neighbours).
        contention: f64,
        input: Input,
        partitions: u32,
        noise: Noise,
        noise_amplitude: f64,
        /// One batch this many times slower than its work (the machine stalled).
        stall: Option<(u64, f64)>,
        replicas: u32,
        workers: u32,
        workers_from: Option<(f64, u32)>,
        /// A re-shard's restart: from when, to how many partitions.
        partitions_from: Option<(f64, u32)>,
        reshards: Vec<(f64, u32, u32)>,
        batches: Vec<Batch>,
        /// Batch end times, to know when the master reports a batch.
        ends: Vec<f64>,
        waiting: f64,
        last_plan: f64,
        end: f64,
        memory: Memory,
        events: Vec<(f64, u32, u32, String)>,
        delays: Vec<(f64, f64)>,
        limits: Vec<Limit>,
    }

    impl Sim {
        fn new(workers: u32, input: Input) -> Self {
            Sim {
                interval: 1.0,
                per_worker: 10_000.0,
                fixed: 0.05,
                contention: 0.0,
                input,
                partitions: 8,
                noise: Noise(7),
                noise_amplitude: 0.2,
                stall: None,
                replicas: workers,
                workers,
                workers_from: None,
                partitions_from: None,
                reshards: Vec::new(),
                batches: Vec::new(),
                ends: Vec::new(),
                waiting: 0.0,
                last_plan: 0.0,
                end: 0.0,
                memory: Memory::default(),
                events: Vec::new(),
                delays: Vec::new(),
                limits: Vec::new(),
            }
        }

        /// Runs from the last batch to `until` seconds with input `rate(t)` records/s.
        fn run(&mut self, settings: &Settings, until: f64, rate: impl Fn(f64) -> f64) {
            let mut next_look = (self.batches.len() as f64 * self.interval).max(2.0);
            loop {
                let k = self.batches.len() as u64 + 1;
                let time = k as f64 * self.interval;
                if time > until {
                    break;
                }
                // The operator's looks up to this batch's start.
                let start = time.max(self.end);
                while next_look <= start {
                    self.look(settings, next_look);
                    next_look += 2.0;
                }
                if let Some((at, w)) = self.workers_from
                    && start >= at
                {
                    self.workers = w;
                    self.workers_from = None;
                }
                if let Some((at, p)) = self.partitions_from
                    && start >= at
                {
                    self.partitions = p;
                    self.partitions_from = None;
                }
                let records = match self.input {
                    Input::ByBatchTime => rate(time) * self.interval,
                    Input::Arrived { cap } => {
                        self.waiting += rate(start) * (start - self.last_plan);
                        let take =
                            cap.map_or(self.waiting, |c| self.waiting.min(c * self.interval));
                        self.waiting -= take;
                        take
                    }
                };
                self.last_plan = start;
                let busy = self.workers.min(self.partitions);
                let slow = match self.stall {
                    Some((at, factor)) if at == k => factor,
                    _ if k.is_multiple_of(10) => 1.5,
                    _ => 1.0,
                };
                let slowdown = 1.0 + self.contention * f64::from(busy - 1);
                // The busiest worker runs ceil(partitions / workers) of the partitions.
                let share = f64::from(self.partitions.div_ceil(busy)) / f64::from(self.partitions);
                let processing = (self.fixed + records * share * slowdown / self.per_worker)
                    * self.noise.next(self.noise_amplitude)
                    * slow;
                self.end = start + processing;
                self.delays.push((time, start - time));
                self.ends.push(self.end);
                self.batches.push(Batch {
                    records: records.round() as u64,
                    processing_ms: (processing * 1000.0).round() as u64,
                    scheduling_delay_ms: ((start - time) * 1000.0).round() as u64,
                    backlog: match self.input {
                        Input::ByBatchTime => None,
                        Input::Arrived { .. } => Some(self.waiting.round() as u64),
                    },
                    workers: busy,
                    replay: false,
                });
            }
        }

        fn look(&mut self, settings: &Settings, at: f64) {
            let reported: Vec<Batch> = self
                .batches
                .iter()
                .zip(&self.ends)
                .filter(|(_, end)| **end <= at)
                .map(|(b, _)| *b)
                .collect();
            let recent = &reported[reported.len().saturating_sub(30)..];
            let look = Look {
                at_ms: (at * 1000.0) as u64,
                replicas: self.replicas,
                partitions: self.partitions,
                interval_ms: (self.interval * 1000.0) as u64,
                batches: recent,
            };
            let d = decide(settings, &look, &mut self.memory);
            if let Some(l) = d.limit {
                self.limits.push(l);
            }
            match d.verdict {
                Verdict::Scale { to, why } => {
                    self.events.push((at, self.replicas, to, why));
                    self.replicas = to;
                    self.workers_from = Some((at + 4.0, to));
                }
                // A restart: no batch runs for 10 s, then the new partitions and workers.
                Verdict::Reshard {
                    partitions,
                    to,
                    why,
                } => {
                    self.events.push((at, self.replicas, to, why));
                    self.reshards.push((at, self.partitions, partitions));
                    self.replicas = to;
                    self.end = self.end.max(at + 10.0);
                    self.workers_from = Some((at + 10.0, to));
                    self.partitions_from = Some((at + 10.0, partitions));
                }
                _ => {}
            }
        }

        /// The greatest scheduling delay in `from..to` seconds of batch time.
        fn peak_delay(&self, from: f64, to: f64) -> f64 {
            self.delays
                .iter()
                .filter(|(t, _)| (from..to).contains(t))
                .map(|(_, d)| *d)
                .fold(0.0, f64::max)
        }

        /// The first batch time from `from` on after which every delay stays under the
        /// interval.
        fn back_in_time(&self, from: f64) -> Option<f64> {
            let after: Vec<&(f64, f64)> = self.delays.iter().filter(|(t, _)| *t >= from).collect();
            let last_late = after.iter().rposition(|(_, d)| *d >= self.interval);
            match last_late {
                None => after.first().map(|(t, _)| *t),
                Some(i) => after.get(i + 1).map(|(t, _)| *t),
            }
        }
    }

    #[test]
    fn a_steady_noisy_load_for_ten_minutes_makes_no_change() {
        // 2 workers at about 0.55 of the interval, ±20 % noise, a slow batch in ten.
        for input in [Input::ByBatchTime, Input::Arrived { cap: None }] {
            let mut sim = Sim::new(2, input);
            sim.run(&settings(1, 8, 0, 60), 600.0, |_| 10_000.0);
            assert!(sim.events.is_empty(), "changes: {:?}", sim.events);
            assert!(sim.limits.is_empty());
        }
    }

    #[test]
    fn one_stalled_batch_and_the_backlog_it_leaves_make_no_change() {
        // One worker at about 0.35 of the interval; one batch takes five times as long (the
        // machine stalled), so the next ones find its input waiting.
        for input in [
            Input::Arrived { cap: None },
            Input::Arrived { cap: Some(2_800.0) },
            Input::ByBatchTime,
        ] {
            for at in [40, 41, 42, 45] {
                let mut sim = Sim::new(1, input);
                sim.fixed = 0.15;
                sim.stall = Some((at, 5.0));
                sim.run(&settings(1, 4, 0, 60), 120.0, |_| 2_600.0);
                assert!(sim.events.is_empty(), "stall at {at}: {:?}", sim.events);
            }
        }
    }

    #[test]
    fn a_four_fold_step_is_met_in_one_change_and_undone_in_one_after_the_delay() {
        for input in [
            Input::ByBatchTime,
            Input::Arrived { cap: None },
            Input::Arrived {
                cap: Some(200_000.0),
            },
        ] {
            let mut sim = Sim::new(2, input);
            let s = settings(1, 8, 0, 60);
            let rate = |t: f64| {
                if (60.0..240.0).contains(&t) {
                    40_000.0
                } else {
                    10_000.0
                }
            };
            sim.run(&s, 480.0, rate);
            let ups: Vec<_> = sim.events.iter().filter(|e| e.2 > e.1).collect();
            let downs: Vec<_> = sim.events.iter().filter(|e| e.2 < e.1).collect();
            assert_eq!(ups.len(), 1, "one step up: {:?}", sim.events);
            assert_eq!(downs.len(), 1, "one step down: {:?}", sim.events);
            let (at, from, to, why) = ups[0];
            // 40 000 records/s at 10 000 per worker and 0.7 of the interval: 6 workers, or
            // more to drain what waits.
            assert_eq!(*from, 2);
            assert!((6..=8).contains(to), "{why}");
            assert!(*at < 70.0, "decided at {at}s, 10 s after the step");
            assert!(why.starts_with(&format!("2 → {to}: processing ")), "{why}");
            // Pods start 4 s after the change: the delay built until then drains at the
            // spare capacity of the new count.
            let back = sim.back_in_time(60.0).expect("back under the interval");
            assert!(
                back < 90.0,
                "behind until {back}s, peak delay {:.1}s",
                sim.peak_delay(60.0, 120.0)
            );
            // Down after the load drops at 240 s, once the newer half of scaleDownAfter saw
            // only the low load, to a count that keeps up (2 or 3 workers at 10 000
            // records/s).
            let (down_at, _, down_to, why) = downs[0];
            assert!(*down_at >= 270.0, "down at {down_at}s: {why}");
            assert!((2..=3).contains(down_to), "{why}");
            assert!(why.contains("were enough at every look for 1m"), "{why}");
            assert!(predicted(why) <= 0.7, "{why}");
            assert!(
                sim.peak_delay(down_at + 10.0, 480.0) < 1.0,
                "behind after the scale down"
            );
        }
    }

    #[test]
    fn partitions_are_dealt_whole_so_counts_that_split_them_unevenly_are_skipped() {
        assert_eq!(effective_workers(4, 3), 2.0);
        assert_eq!(effective_workers(4, 9), 4.0);
        assert_eq!(effective_workers(8, 3), 8.0 / 3.0);
        assert_eq!(workers_for(2.3, 4), 4);
        assert_eq!(workers_for(2.0, 4), 2);
        assert_eq!(workers_for(6.5, 4), 7);
        assert_eq!(workers_for(0.0, 4), 0);
        // The end-to-end test's job: 4 partitions, a worker doing ~6,700 records/s with
        // ~100 ms of fixed cost per batch, a 4x step from 0.35 of one worker. 3 workers
        // would leave one with 2 partitions, as slow as 2 workers: the step goes to 4, and
        // back down to a count that splits them evenly.
        for input in [Input::ByBatchTime, Input::Arrived { cap: None }] {
            let mut sim = Sim::new(1, input);
            sim.partitions = 4;
            sim.per_worker = 6_700.0;
            sim.fixed = 0.1;
            sim.run(&settings(1, 4, 0, 60), 400.0, |t| {
                if (60.0..200.0).contains(&t) {
                    9_000.0
                } else {
                    2_250.0
                }
            });
            let changes: Vec<(u32, u32)> = sim.events.iter().map(|e| (e.1, e.2)).collect();
            assert_eq!(changes.len(), 2, "{:?}", sim.events);
            assert_eq!(changes[0], (1, 4), "{:?}", sim.events);
            assert!(matches!(changes[1], (4, 1 | 2)), "{:?}", sim.events);
            // The fixed cost, fitted over the looks before and after the step, is what lets
            // one step down go that far.
            assert!(
                sim.events[1].3.contains("of each batch is fixed cost"),
                "{:?}",
                sim.events
            );
            assert!(predicted(&sim.events[1].3) <= 0.7, "{:?}", sim.events);
        }
    }

    #[test]
    fn workers_slower_together_than_alone_are_not_taken_away_under_load() {
        // Each added worker slows all by 15 %: what one worker did alone overstates what
        // each does among four, and must not talk the count down while the load lasts.
        let mut sim = Sim::new(1, Input::Arrived { cap: Some(6_000.0) });
        sim.contention = 0.15;
        sim.run(&settings(1, 8, 0, 60), 400.0, |t| {
            if t < 60.0 { 6_000.0 } else { 24_000.0 }
        });
        let downs = sim.events.iter().filter(|e| e.2 < e.1).count();
        assert_eq!(downs, 0, "{:?}", sim.events);
        assert!(sim.events.len() <= 2, "{:?}", sim.events);
    }

    #[test]
    fn partitions_bound_the_workers_and_the_need_past_them_is_reported() {
        let mut sim = Sim::new(2, Input::ByBatchTime);
        sim.partitions = 4;
        sim.run(&settings(1, 10, 0, 60), 120.0, |t| {
            if t < 30.0 { 10_000.0 } else { 60_000.0 }
        });
        assert_eq!(sim.events.len(), 1, "{:?}", sim.events);
        assert_eq!(
            sim.events[0].2, 4,
            "as many as partitions: {:?}",
            sim.events
        );
        let Some(
            limit @ Limit::Partitions {
                needed, partitions, ..
            },
        ) = sim.limits.last().copied()
        else {
            panic!("no limit reported: {:?}", sim.limits);
        };
        assert_eq!(partitions, 4);
        assert!(needed >= 9, "needs {needed}");
        assert!(
            limit
                .message()
                .contains("raise spec.parallelism, or set spec.workers.autoscale.maxParallelism"),
            "{}",
            limit.message()
        );
    }

    #[test]
    fn a_need_past_the_partitions_raises_them_once_where_max_parallelism_allows() {
        // 2 partitions, up to 8: an 8x step needs about 6 workers, past the partitions. The
        // partitions go to 8 in one restart, the workers to what 8 partitions need; later
        // steps are live, and the partitions never come down.
        let mut sim = Sim::new(1, Input::Arrived { cap: None });
        sim.partitions = 2;
        let s = Settings {
            max_parallelism: Some(8),
            ..settings(1, 8, 0, 60)
        };
        sim.run(&s, 400.0, |t| {
            if (60.0..200.0).contains(&t) {
                40_000.0
            } else {
                5_000.0
            }
        });
        assert_eq!(sim.reshards.len(), 1, "{:?}", sim.events);
        let (at, from, to) = sim.reshards[0];
        assert!((60.0..70.0).contains(&at), "re-sharded at {at}s");
        assert_eq!((from, to), (2, 8));
        assert_eq!(sim.partitions, 8);
        let (_, _, workers, why) = &sim.events[0];
        assert!((6..=8).contains(workers), "{why}");
        assert!(why.contains("2 → 8 partitions"), "{why}");
        // The restart's pause builds a backlog past what 8 workers drain within 5 intervals:
        // maxReplicas, not the partitions, is then the limit.
        assert!(
            sim.limits
                .iter()
                .all(|l| matches!(l, Limit::MaxReplicas { .. })),
            "{:?}",
            sim.limits
        );
        let downs: Vec<_> = sim.events.iter().filter(|e| e.2 < e.1).collect();
        assert_eq!(downs.len(), 1, "{:?}", sim.events);
        // The count met the load: the batches before the drop took under the target.
        let late = &sim.batches[150..199];
        let mean = late.iter().map(|b| b.processing_ms).sum::<u64>() / late.len() as u64;
        assert!(mean < 750, "batches of {mean} ms at 8 partitions");

        // At maxParallelism, the need past it is reported, naming maxParallelism.
        let mut sim = Sim::new(2, Input::ByBatchTime);
        sim.partitions = 4;
        let s = Settings {
            max_parallelism: Some(4),
            ..settings(1, 10, 0, 60)
        };
        sim.run(&s, 90.0, |t| if t < 30.0 { 10_000.0 } else { 60_000.0 });
        assert!(sim.reshards.is_empty());
        let Some(limit) = sim.limits.last() else {
            panic!("no limit: {:?}", sim.events);
        };
        assert!(
            limit.message().contains("raise maxParallelism"),
            "{}",
            limit.message()
        );
    }

    #[test]
    fn max_replicas_bounds_the_workers_and_says_so() {
        let mut sim = Sim::new(2, Input::ByBatchTime);
        sim.run(&settings(1, 3, 0, 60), 90.0, |t| {
            if t < 30.0 { 10_000.0 } else { 60_000.0 }
        });
        assert_eq!(sim.replicas, 3, "{:?}", sim.events);
        assert!(matches!(
            sim.limits.last(),
            Some(Limit::MaxReplicas { max: 3, .. })
        ));
    }

    #[test]
    fn an_idle_job_goes_down_to_the_minimum_after_the_delay() {
        let mut sim = Sim::new(4, Input::ByBatchTime);
        sim.run(&settings(2, 8, 0, 60), 200.0, |_| 0.0);
        assert_eq!(sim.replicas, 2, "{:?}", sim.events);
        assert_eq!(sim.events.len(), 1);
        assert!(sim.events[0].0 >= 60.0);
    }

    #[test]
    fn scale_up_after_waits_and_takes_the_smallest_need_it_saw() {
        let mut sim = Sim::new(2, Input::ByBatchTime);
        sim.run(&settings(1, 8, 20, 60), 120.0, |t| {
            if t < 30.0 { 10_000.0 } else { 40_000.0 }
        });
        let (at, _, _, _) = sim.events.first().expect("a step up");
        assert!(*at >= 50.0, "up at {at}s, before 20 s of need");
    }

    #[test]
    fn a_short_spike_within_scale_up_after_changes_nothing() {
        let mut sim = Sim::new(2, Input::ByBatchTime);
        sim.run(&settings(1, 8, 30, 60), 200.0, |t| {
            if (60.0..70.0).contains(&t) {
                30_000.0
            } else {
                10_000.0
            }
        });
        assert!(sim.events.is_empty(), "{:?}", sim.events);
    }

    #[test]
    fn replicas_outside_the_bounds_are_brought_in_at_once() {
        let s = settings(2, 5, 60, 60);
        let mut memory = Memory::default();
        let look = |replicas| Look {
            at_ms: 1000,
            replicas,
            partitions: 8,
            interval_ms: 1000,
            batches: &[],
        };
        let d = decide(&s, &look(9), &mut memory);
        assert_eq!(
            d.verdict,
            Verdict::Scale {
                to: 5,
                why: "9 → 5: 9 workers is above maxReplicas 5".into()
            }
        );
        let d = decide(&s, &look(1), &mut memory);
        assert!(matches!(d.verdict, Verdict::Scale { to: 2, .. }));
        let d = decide(&s, &look(3), &mut memory);
        assert_eq!(
            d.verdict,
            Verdict::Wait("no batch figures from the master yet".into())
        );
    }

    #[test]
    fn batches_of_the_previous_workers_and_replays_are_not_judged() {
        let s = settings(1, 8, 0, 60);
        let mut memory = Memory::default();
        let batch = |workers, replay| Batch {
            records: 40_000,
            processing_ms: 3000,
            scheduling_delay_ms: 5000,
            backlog: None,
            workers,
            replay,
        };
        let batches = [
            batch(2, false),
            batch(2, false),
            batch(2, false),
            batch(6, true),
            batch(6, false),
        ];
        let look = Look {
            at_ms: 1000,
            replicas: 6,
            partitions: 8,
            interval_ms: 1000,
            batches: &batches,
        };
        let d = decide(&s, &look, &mut memory);
        assert_eq!(
            d.verdict,
            Verdict::Wait("waiting for 3 batches on 6 workers (1 so far)".into())
        );
        // Workers that never come (no room for their pods): after a while the batches of the
        // workers there are judged.
        let later = Look {
            at_ms: 1000 + millis(SETTLE),
            replicas: 6,
            batches: &batches[..3],
            ..look
        };
        let d = decide(&s, &later, &mut memory);
        assert_eq!(d.estimate.map(|e| e.workers), Some(2));
    }

    #[test]
    fn the_spec_is_checked_with_field_paths() {
        let spec = |min, max, target, up: &str| AutoscaleSpec {
            min_replicas: min,
            max_replicas: max,
            target_utilization: target,
            scale_up_after: Some(up.to_string()),
            scale_down_after: None,
            max_parallelism: None,
        };
        let ok = Settings::from_spec(&spec(None, 4, None, "10s")).expect("valid");
        assert_eq!(ok, settings(1, 4, 10, 300));
        let err = |s| Settings::from_spec(&s).expect_err("invalid");
        assert!(err(spec(Some(5), 4, None, "0s")).contains("minReplicas 5 exceeds maxReplicas 4"));
        assert!(
            err(spec(Some(0), 4, None, "0s")).starts_with("spec.workers.autoscale.minReplicas")
        );
        assert!(
            err(spec(None, 4, Some(1.5), "0s"))
                .starts_with("spec.workers.autoscale.targetUtilization")
        );
        assert!(
            err(spec(None, 4, None, "soon")).starts_with("spec.workers.autoscale.scaleUpAfter")
        );
        let too_many = AutoscaleSpec {
            max_parallelism: Some(5000),
            ..spec(None, 4, None, "0s")
        };
        assert!(err(too_many).starts_with("spec.workers.autoscale.maxParallelism: 5000"));
    }
}
