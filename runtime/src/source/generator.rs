//! Deterministic lines at a target rate: text from a Zipf-distributed vocabulary (with
//! hashtags) or JSON user events. Record `i` depends only on the seed and `i`, so any range can
//! be regenerated after a restart, in parallel, and identically across Sluice versions: the
//! random numbers come from our own SplitMix64 rather than a crate whose streams may change.

use rayon::prelude::*;
use serde_json::{Value as Json, json};
use sluice_crds::GeneratorFormat;

use super::{Refusals, Source};
use crate::error::{Error, Result};
use crate::time::BatchInfo;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub name: String,
    /// Lines per second of stream time.
    pub rate: u64,
    pub seed: u64,
    pub format: GeneratorFormat,
    /// Distinct words (text) or users (json).
    pub vocabulary: u32,
    /// Approximate bytes per text line.
    pub line_bytes: u32,
}

const CONSONANTS: &[u8] = b"bcdfghjklmnprstvwxz";
const VOWELS: &[u8] = b"aeiou";
const ACTIONS: [&str; 4] = ["view", "click", "share", "buy"];

pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Walker's alias table: O(1) draws from a fixed discrete distribution.
struct Alias {
    threshold: Vec<u32>,
    alias: Vec<u32>,
}

impl Alias {
    fn zipf(n: usize) -> Self {
        let weights: Vec<f64> = (1..=n).map(|r| 1.0 / r as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut alias = vec![0u32; n];
        let mut threshold = vec![u32::MAX; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            threshold[s] = (scaled[s] * u32::MAX as f64) as u32;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Self { threshold, alias }
    }

    fn draw(&self, r: u64) -> usize {
        let column = (((r >> 32) * self.threshold.len() as u64) >> 32) as usize;
        if (r as u32) < self.threshold[column] {
            column
        } else {
            self.alias[column] as usize
        }
    }
}

/// The pure line generator, shared by the source and the benchmarks.
pub struct TextGenerator {
    config: GeneratorConfig,
    words: Vec<String>,
    zipf: Alias,
}

impl TextGenerator {
    /// Builds the vocabulary and the sampling table.
    pub fn new(config: GeneratorConfig) -> Self {
        let n = config.vocabulary.max(1) as usize;
        let words = (0..n).map(|i| Self::word(config.seed, i)).collect();
        Self {
            zipf: Alias::zipf(n),
            words,
            config,
        }
    }

    /// Word `i`: consonant-vowel pairs spelling `i` in base 95, so words are unique and
    /// pronounceable; about one in twenty is a `#hashtag`.
    fn word(seed: u64, i: usize) -> String {
        let mut w = String::new();
        let mut x = i;
        loop {
            let pair = x % (CONSONANTS.len() * VOWELS.len());
            w.push(CONSONANTS[pair / VOWELS.len()] as char);
            w.push(VOWELS[pair % VOWELS.len()] as char);
            x /= CONSONANTS.len() * VOWELS.len();
            if x == 0 && w.len() >= 4 {
                break;
            }
        }
        let mut s = seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        if splitmix(&mut s).is_multiple_of(20) {
            format!("#{w}")
        } else {
            w
        }
    }

    /// Appends line `index` to `out`.
    pub fn line(&self, index: u64, out: &mut String) {
        let mut s = self.config.seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F);
        match self.config.format {
            GeneratorFormat::Text => {
                let target = self.config.line_bytes as usize;
                let start = out.len();
                loop {
                    out.push_str(&self.words[self.zipf.draw(splitmix(&mut s))]);
                    if out.len() - start >= target {
                        break;
                    }
                    out.push(' ');
                }
            }
            GeneratorFormat::Json => {
                use std::fmt::Write;
                let user = self.zipf.draw(splitmix(&mut s));
                let action = ACTIONS[(splitmix(&mut s) % ACTIONS.len() as u64) as usize];
                let amount = splitmix(&mut s) % 1000;
                let word = &self.words[self.zipf.draw(splitmix(&mut s))];
                let _ = write!(
                    out,
                    r#"{{"user":"user{user}","action":"{action}","amount":{amount},"text":"{word}"}}"#
                );
            }
            GeneratorFormat::Nexmark => self.nexmark_event(index).write_json(out),
        }
    }

    /// Line `index`.
    pub fn line_at(&self, index: u64) -> String {
        let mut line = String::with_capacity(self.config.line_bytes as usize + 16);
        self.line(index, &mut line);
        line
    }

    /// Nexmark event `index`, generated at its stream time: the event time is the processing
    /// time.
    pub fn nexmark_event(&self, index: u64) -> super::nexmark::Event {
        let rate = self.config.rate.max(1);
        // A 128-bit division is a library call, for every event: only past 2^64 is it needed.
        let time_ms = match index.checked_mul(1000) {
            Some(ms) => ms / rate,
            None => (u128::from(index) * 1000 / u128::from(rate)) as u64,
        };
        super::nexmark::generate(self.config.seed, index, time_ms)
    }

    /// Lines `[start, end)` split into `partitions` contiguous runs, generated in parallel.
    pub fn lines(&self, start: u64, end: u64, partitions: usize) -> Vec<Vec<String>> {
        self.records(start, end, partitions, &|g, index| g.line_at(index))
    }

    /// Records `[start, end)`, each made by `make` from its index, split into `partitions`
    /// contiguous runs, generated in parallel.
    pub fn records<T: Send>(
        &self,
        start: u64,
        end: u64,
        partitions: usize,
        make: &(dyn Fn(&TextGenerator, u64) -> T + Sync),
    ) -> Vec<Vec<T>> {
        let n = end.saturating_sub(start);
        let p = partitions.max(1) as u64;
        (0..p)
            .into_par_iter()
            .map(|i| {
                let from = start + n * i / p;
                let to = start + n * (i + 1) / p;
                (from..to).map(|index| make(self, index)).collect()
            })
            .collect()
    }

    /// Index of the first line after `offset_ms` of stream time.
    pub fn lines_before(&self, offset_ms: u64) -> u64 {
        (self.config.rate as u128 * offset_ms as u128 / 1000) as u64
    }
}

/// Makes record `index` of a generator.
pub type MakeRecord<T> = std::sync::Arc<dyn Fn(&TextGenerator, u64) -> T + Send + Sync>;

/// The `generator` source: `rate` lines (or records) per second of batch time, replayable.
pub struct GeneratorSource<T = String> {
    generator: TextGenerator,
    next: u64,
    make: MakeRecord<T>,
}

impl GeneratorSource<String> {
    /// A generator of lines, positioned at its first.
    pub fn new(config: GeneratorConfig) -> Self {
        Self::making(config, std::sync::Arc::new(|g, index| g.line_at(index)))
    }
}

impl<T> GeneratorSource<T> {
    /// A generator of the records `make` makes (Nexmark events as records, rather than
    /// printed as JSON to be parsed again), positioned at its first.
    pub fn making(config: GeneratorConfig, make: MakeRecord<T>) -> Self {
        Self {
            generator: TextGenerator::new(config),
            next: 0,
            make,
        }
    }

    fn bad_range(&self, range: &Json) -> Error {
        Error::Source {
            source_name: self.generator.config.name.clone(),
            message: format!("unreadable range {range}"),
        }
    }
}

impl<T: crate::data::Data> Source for GeneratorSource<T> {
    type Item = T;

    fn name(&self) -> &str {
        &self.generator.config.name
    }

    fn replayable(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &BatchInfo) -> Result<Json> {
        let start = self.next;
        let end = self.generator.lines_before(batch.offset_ms()).max(start);
        self.next = end;
        Ok(json!({ "start": start, "end": end }))
    }

    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        _refused: &mut Refusals,
    ) -> Result<Vec<Vec<T>>> {
        let start = range["start"]
            .as_u64()
            .ok_or_else(|| self.bad_range(range))?;
        let end = range["end"].as_u64().ok_or_else(|| self.bad_range(range))?;
        // Ranges come from the offset log or over the network: no planned batch is larger
        // than validation allows, so a larger one is refused before it is allocated.
        let most = sluice_crds::defaults::GENERATOR_BATCH_BYTES
            / u64::from(self.generator.config.line_bytes.max(8));
        if end < start || end - start > most {
            return Err(self.bad_range(range));
        }
        Ok(self.generator.records(start, end, partitions, &*self.make))
    }

    fn position(&self) -> Json {
        json!({ "next": self.next })
    }

    fn seek(&mut self, position: &Json) -> Result<()> {
        self.next = position["next"].as_u64().ok_or_else(|| Error::Source {
            source_name: self.generator.config.name.clone(),
            message: format!("unreadable position {position}"),
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(format: GeneratorFormat) -> GeneratorConfig {
        GeneratorConfig {
            name: "g".into(),
            rate: 1000,
            seed: 7,
            format,
            vocabulary: 1000,
            line_bytes: 100,
        }
    }

    #[test]
    fn lines_are_deterministic_and_sized() {
        let g = TextGenerator::new(config(GeneratorFormat::Text));
        let a = g.lines(10, 20, 3);
        assert_eq!(a, g.lines(10, 20, 3));
        assert_eq!(
            a.concat(),
            g.lines(10, 20, 1).concat(),
            "partitioning must not change the lines"
        );
        for line in a.concat() {
            assert!((100..120).contains(&line.len()), "{line}");
        }
    }

    #[test]
    fn zipf_favours_the_first_words() {
        let g = TextGenerator::new(config(GeneratorFormat::Text));
        let text = g.lines(0, 2000, 1).concat().join(" ");
        let count = |w: &str| text.split(' ').filter(|x| *x == w).count();
        assert!(count(&g.words[0]) > 5 * count(&g.words[50]).max(1));
    }

    #[test]
    fn json_lines_parse() {
        let g = TextGenerator::new(config(GeneratorFormat::Json));
        for line in g.lines(0, 50, 2).concat() {
            let v: serde_json::Value = serde_json::from_str(&line).expect("generated JSON parses");
            assert!(v["user"].as_str().is_some_and(|u| u.starts_with("user")));
        }
    }

    #[test]
    fn rate_follows_stream_time() {
        let mut s = GeneratorSource::new(config(GeneratorFormat::Text));
        let r = s.plan(&BatchInfo::new(0, 100, 1)).expect("plan");
        assert_eq!(r, json!({"start": 0, "end": 100}));
        // A missed batch is caught up: batch 3 covers batches 2 and 3.
        let r = s.plan(&BatchInfo::new(0, 100, 3)).expect("plan");
        assert_eq!(r, json!({"start": 100, "end": 300}));
    }
}
