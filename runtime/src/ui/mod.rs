//! The batch-timeline page, modelled on Spark's Streaming tab: live charts of input rate,
//! scheduling delay, processing time and total delay over the recent batches, a table of them
//! with each stage's time, the partitions' owners, and the recent checkpoints, recoveries and
//! placements. Served by the batch loop's process (`sluice run --ui`, the master) next to
//! `/metrics`; the page reads `/api/timeline` every second. The charts are uPlot's (vendored
//! from npm, see `vendor/README.md`).

/// The page.
pub const PAGE: &str = include_str!("page.html");
/// uPlot's script and style sheet.
pub const UPLOT_JS: &str = include_str!("vendor/uPlot.iife.min.js");
pub const UPLOT_CSS: &str = include_str!("vendor/uPlot.min.css");
