//! Where each partition runs: spread evenly over the workers, each partition staying where it
//! was while its worker is still there and not over its share, so that a change of workers
//! moves as little state as it can.

/// `owners[p]`: the index of the worker that owns partition `p`, among `workers` workers.
/// `previous[p]` is where `p` was, as an index into the same workers (`None`: its worker is
/// gone, or it was never placed).
pub fn spread(previous: &[Option<usize>], partitions: usize, workers: usize) -> Vec<usize> {
    if workers == 0 {
        return Vec::new();
    }
    let mut load = vec![0usize; workers];
    let share = partitions.div_ceil(workers);
    let mut owners = vec![usize::MAX; partitions];
    for (p, owner) in previous.iter().enumerate().take(partitions) {
        if let Some(owner) = *owner
            && owner < workers
            && load[owner] < share
        {
            owners[p] = owner;
            load[owner] += 1;
        }
    }
    for owner in owners.iter_mut().filter(|o| **o == usize::MAX) {
        let least = (0..workers).min_by_key(|w| load[*w]).unwrap_or(0);
        *owner = least;
        load[least] += 1;
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(owners: &[usize], workers: usize) -> Vec<usize> {
        let mut load = vec![0; workers];
        owners.iter().for_each(|o| load[*o] += 1);
        load
    }

    #[test]
    fn partitions_spread_evenly() {
        let owners = spread(&[], 16, 4);
        assert_eq!(loads(&owners, 4), [4, 4, 4, 4]);
        assert_eq!(loads(&spread(&[], 5, 2), 2), [3, 2]);
        assert!(spread(&[], 4, 0).is_empty());
    }

    #[test]
    fn a_lost_worker_moves_only_its_partitions() {
        let before = spread(&[], 16, 4);
        // Worker 3 is gone; the others keep their indices.
        let previous: Vec<Option<usize>> = before.iter().map(|o| (*o != 3).then_some(*o)).collect();
        let after = spread(&previous, 16, 3);
        for (p, was) in before.iter().enumerate() {
            if *was != 3 {
                assert_eq!(after[p], *was, "partition {p} moved");
            }
        }
        assert!(loads(&after, 3).iter().all(|l| (5..=6).contains(l)));
    }

    #[test]
    fn a_new_worker_takes_a_fair_share_from_the_others() {
        let before = spread(&[], 12, 2);
        let previous: Vec<Option<usize>> = before.iter().map(|o| Some(*o)).collect();
        let after = spread(&previous, 12, 3);
        assert_eq!(loads(&after, 3), [4, 4, 4]);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 4, "only the new worker's share moves");
    }
}
