//! The state log: after each batch, every worker writes what each stateful operation took in
//! for the partitions it owns (the operation's shuffled or buffered input, already combined).
//! When a worker is lost, the new owners of its partitions load them from the last snapshot
//! and apply the logged inputs of the batches after it, in order, instead of recomputing those
//! batches from the source: no input is read, no map side runs, nothing is shuffled. So the
//! cost of rebuilding lost state grows with the size of the logged inputs, not with the work
//! of the batches, and hardly with the checkpoint interval.
//!
//! One object per batch and writer, `statelog/<batch>-<partitions>.bin`, the partitions it
//! covers as a hexadecimal bitmap in its name, so that a single listing tells the master which
//! objects cover a lost partition. A worker names only partitions for which it holds the input
//! of every stateful operation of the batch. The log is written after the worker answers the
//! batch's last stage, off the batch's path, and is not part of the commit: a batch whose log
//! is missing or damaged is recomputed from its logged source ranges, as before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Checkpointer;
use crate::error::{Error, Result};
use crate::exec::StateInputs;

/// Where the state log lives in the checkpoint.
pub const DIR: &str = "statelog";

/// The most partitions a job can have for its workers to keep a state log: the bitmap in an
/// object's name takes one character per four partitions, and S3 keys end at 1024 bytes.
pub const MAX_PARTITIONS: usize = 2048;

/// A state log object, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedState {
    pub batch: u64,
    /// The partitions it covers, in order.
    pub parts: Vec<usize>,
    /// Its key in the checkpoint.
    pub key: String,
}

/// The name of the object holding `batch`'s inputs of `parts`; `None` beyond
/// [`MAX_PARTITIONS`].
pub fn name(batch: u64, parts: &[usize]) -> Option<String> {
    let top = parts.iter().copied().max()?;
    if top >= MAX_PARTITIONS {
        return None;
    }
    let mut nibbles = vec![0u8; top / 4 + 1];
    for &p in parts {
        nibbles[p / 4] |= 1 << (p % 4);
    }
    let bitmap: String = nibbles
        .iter()
        .map(|n| char::from_digit(u32::from(*n), 16).unwrap_or('0'))
        .collect();
    Some(format!("{batch:020}-{bitmap}.bin"))
}

/// The batch and partitions an object's name says it holds.
pub fn parse(name: &str) -> Option<(u64, Vec<usize>)> {
    let (batch, bitmap) = name.strip_suffix(".bin")?.split_once('-')?;
    let batch = batch.parse().ok()?;
    let mut parts = Vec::new();
    for (i, c) in bitmap.chars().enumerate() {
        let n = c.to_digit(16)?;
        parts.extend((0..4).filter(|b| n & (1 << b) != 0).map(|b| i * 4 + b));
    }
    (!parts.is_empty()).then_some((batch, parts))
}

#[derive(Serialize, Deserialize)]
struct Body {
    batch: u64,
    /// (materializer, partition, input).
    inputs: Vec<(u32, u32, Vec<u8>)>,
}

impl Checkpointer {
    /// Writes the inputs of `batch` for `parts` (every entry of `inputs` outside them is
    /// left out). Nothing is written beyond [`MAX_PARTITIONS`].
    pub fn put_state_log(&self, batch: u64, parts: &[usize], inputs: &StateInputs) -> Result<()> {
        let Some(name) = name(batch, parts) else {
            return Ok(());
        };
        let body = Body {
            batch,
            inputs: inputs
                .iter()
                .filter(|((_, p), _)| parts.contains(p))
                .map(|((m, p), bytes)| (*m as u32, *p as u32, bytes.clone()))
                .collect(),
        };
        let mut bytes = postcard::to_stdvec(&body)
            .map_err(|e| Error::Internal(format!("cannot encode the state log: {e}")))?;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(self.store.put(&format!("{DIR}/{name}"), &bytes)?)
    }

    /// Every state log object, by batch.
    pub fn state_log(&self) -> Result<Vec<LoggedState>> {
        Ok(self
            .store
            .list(DIR)?
            .into_iter()
            .filter_map(|name| {
                let (batch, parts) = parse(&name)?;
                Some(LoggedState {
                    batch,
                    parts,
                    key: format!("{DIR}/{name}"),
                })
            })
            .collect())
    }

    /// Several objects (key, batch) read at once: the inputs each holds, by (materializer,
    /// partition), or why it cannot be used (vanished, damaged, of another batch). The store
    /// failing fails them all.
    pub fn read_state_logs(&self, wanted: &[(String, u64)]) -> Result<Vec<Result<StateInputs>>> {
        let keys: Vec<String> = wanted.iter().map(|(k, _)| k.clone()).collect();
        Ok(self
            .store
            .get_many(&keys)?
            .into_iter()
            .zip(wanted)
            .map(|(bytes, (key, batch))| decode(key, *batch, bytes))
            .collect())
    }
}

fn decode(key: &str, batch: u64, bytes: Option<Vec<u8>>) -> Result<StateInputs> {
    let bytes = bytes.ok_or_else(|| Error::Checkpoint(format!("state log {key} is missing")))?;
    let damaged = |why: &str| Error::Checkpoint(format!("state log {key} is damaged: {why}"));
    let Some(split) = bytes.len().checked_sub(4) else {
        return Err(damaged("too short"));
    };
    let (body, crc) = bytes.split_at(split);
    let crc: [u8; 4] = crc.try_into().map_err(|_| damaged("too short"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err(damaged("checksum mismatch"));
    }
    let body: Body = postcard::from_bytes(body).map_err(|e| damaged(&e.to_string()))?;
    if body.batch != batch {
        return Err(damaged(&format!("it holds batch {}", body.batch)));
    }
    let mut out = BTreeMap::new();
    for (m, p, input) in body.inputs {
        out.insert((m as usize, p as usize), input);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::MemoryStore;

    #[test]
    fn names_carry_batch_and_partitions() {
        for parts in [vec![0], vec![3], vec![1, 5, 9, 13], vec![0, 4, 2047]] {
            let n = name(42, &parts).expect("name");
            assert_eq!(parse(&n), Some((42, parts.clone())), "{n}");
        }
        assert_eq!(
            name(7, &[0, 4, 8, 12]).as_deref(),
            Some("00000000000000000007-1111.bin")
        );
        assert_eq!(name(7, &[2048]), None);
        assert_eq!(name(7, &[]), None);
        for bad in ["x-1.bin", "00000000000000000007-0.bin", "7-g.bin", "7.bin"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn objects_round_trip_and_damage_is_found() -> Result<()> {
        let c = Checkpointer::new(Box::new(MemoryStore::default()), 10, 2);
        let mut inputs = StateInputs::new();
        inputs.insert((0, 1), vec![1, 2, 3]);
        inputs.insert((1, 1), Vec::new());
        inputs.insert((0, 2), vec![9]);
        c.put_state_log(5, &[1], &inputs)?;
        let logged = c.state_log()?;
        assert_eq!(logged.len(), 1);
        assert_eq!((logged[0].batch, logged[0].parts.clone()), (5, vec![1]));
        let read_one = |batch: u64| -> Result<StateInputs> {
            let mut read = c.read_state_logs(&[(logged[0].key.clone(), batch)])?;
            read.pop().expect("one result")
        };
        let read = read_one(5)?;
        assert_eq!(read.len(), 2, "only partition 1's entries");
        assert_eq!(read.get(&(0, 1)), Some(&vec![1, 2, 3]));
        assert!(read_one(6).is_err(), "another batch");
        c.store.put(&logged[0].key, b"not a log")?;
        assert!(read_one(5).is_err(), "damaged");
        c.store.delete(&logged[0].key)?;
        assert!(read_one(5).is_err(), "vanished");
        Ok(())
    }
}
