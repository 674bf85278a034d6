//! Splitting a run's cases across processes (`--shard I/N`, Slurm job arrays).
//!
//! Assignment rule: sort the case ids (byte order), then case number `r` in that order goes to
//! shard `r mod N`. It depends only on the set of case ids, never on the order the inputs were
//! listed or the file system returned them, and every shard gets ⌊n/N⌋ or ⌈n/N⌉ cases (a hash
//! of the id would be just as stable but can leave shards empty on small sets). Each case lands
//! in exactly one shard, so the union of N shards is the single-process run; with resume
//! (existing outputs skipped) a rerun over a grown dataset still never writes a case twice.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count` (0-based): `--shard 3/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    index: usize,
    count: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("shard '{0}': expected I/N with 0 <= I < N, e.g. 0/4")]
    Syntax(String),
    #[error(
        "shard {index}/{count}: the index must be below the count (shards are numbered from 0)"
    )]
    OutOfRange { index: usize, count: usize },
    #[error("Slurm array: {var}={value} is not a number")]
    SlurmVar { var: &'static str, value: String },
    #[error(
        "Slurm array task {id} (min {min}, step {step}) does not map to one of {count} shards; \
         submit the array as --array=0-{last} or pass --shard I/N"
    )]
    SlurmRange {
        id: usize,
        min: usize,
        step: usize,
        count: usize,
        last: usize,
    },
}

impl crate::error::Classify for ShardError {
    fn is_input_error(&self) -> bool {
        true
    }
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn is_all(&self) -> bool {
        self.count == 1
    }

    /// The shard of a Slurm job-array task, from `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`,
    /// `SLURM_ARRAY_TASK_MIN` and `SLURM_ARRAY_TASK_STEP` as `get(name)` returns them. `None`
    /// outside a job array.
    pub fn from_slurm_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Shard>, ShardError> {
        let num = |var: &'static str| -> Result<Option<usize>, ShardError> {
            match get(var) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| ShardError::SlurmVar { var, value: v }),
            }
        };
        let (Some(id), Some(count)) = (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?)
        else {
            return Ok(None);
        };
        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let bad = || ShardError::SlurmRange {
            id,
            min,
            step,
            count,
            last: count.saturating_sub(1),
        };
        if id < min || (id - min) % step != 0 {
            return Err(bad());
        }
        let index = (id - min) / step;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Some(Shard { index, count }))
    }

    /// The process environment's Slurm shard, if any.
    pub fn from_env() -> Result<Option<Shard>, ShardError> {
        Shard::from_slurm_env(|k| std::env::var(k).ok())
    }

    /// Which of `ids` belong to this shard (a mask in the order given). Ids must be unique.
    pub fn select<S: AsRef<str>>(&self, ids: &[S]) -> Vec<bool> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| ids[a].as_ref().as_bytes().cmp(ids[b].as_ref().as_bytes()));
        let rank: HashMap<usize, usize> = order.iter().enumerate().map(|(r, &i)| (i, r)).collect();
        (0..ids.len())
            .map(|i| rank[&i] % self.count == self.index)
            .collect()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ShardError::Syntax(s.to_string());
        let (i, n) = s.trim().split_once('/').ok_or_else(syntax)?;
        let index = i.trim().parse::<usize>().map_err(|_| syntax())?;
        let count = n.trim().parse::<usize>().map_err(|_| syntax())?;
        Shard::new(index, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("3/8".parse::<Shard>().unwrap(), Shard::new(3, 8).unwrap());
        assert_eq!(" 0 / 1 ".parse::<Shard>().unwrap(), Shard::ALL);
        assert!(matches!(
            "8/8".parse::<Shard>(),
            Err(ShardError::OutOfRange { .. })
        ));
        assert!(matches!(
            "1/0".parse::<Shard>(),
            Err(ShardError::OutOfRange { .. })
        ));
        for bad in ["", "3", "a/b", "-1/4", "1/2/3"] {
            assert!(
                matches!(bad.parse::<Shard>(), Err(ShardError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(Shard::new(2, 5).unwrap().to_string(), "2/5");
    }

    #[test]
    fn assignment_is_a_partition_independent_of_order() {
        let ids: Vec<String> = (0..23)
            .map(|i| format!("case{:03}", (i * 7) % 23))
            .collect();
        let mut reversed = ids.clone();
        reversed.reverse();
        let n = 4;
        let mut owner = HashMap::new();
        for i in 0..n {
            let s = Shard::new(i, n).unwrap();
            let sel = s.select(&ids);
            let sel_rev = s.select(&reversed);
            let a: Vec<&String> = ids.iter().zip(&sel).filter(|p| *p.1).map(|p| p.0).collect();
            let mut b: Vec<&String> = reversed
                .iter()
                .zip(&sel_rev)
                .filter(|p| *p.1)
                .map(|p| p.0)
                .collect();
            b.reverse();
            assert_eq!(a, b, "shard {i} depends on listing order");
            assert!(a.len() == 5 || a.len() == 6, "unbalanced: {}", a.len());
            for id in a {
                assert!(owner.insert(id.clone(), i).is_none(), "{id} in two shards");
            }
        }
        assert_eq!(owner.len(), ids.len());
        assert!(Shard::ALL.select(&ids).iter().all(|&x| x));
    }

    #[test]
    fn slurm_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Shard::from_slurm_env(env(&[])).unwrap(), None);
        assert_eq!(
            Shard::from_slurm_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "3")
            ]))
            .unwrap(),
            Some(Shard::new(2, 3).unwrap())
        );
        // --array=5-8: ids 5..8, min 5
        assert_eq!(
            Shard::from_slurm_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "7"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
                ("SLURM_ARRAY_TASK_MIN", "5"),
                ("SLURM_ARRAY_TASK_MAX", "8")
            ]))
            .unwrap(),
            Some(Shard::new(2, 4).unwrap())
        );
        // --array=0-8:4 → ids 0,4,8, count 3, step 4
        assert_eq!(
            Shard::from_slurm_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "8"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
                ("SLURM_ARRAY_TASK_STEP", "4")
            ]))
            .unwrap(),
            Some(Shard::new(2, 3).unwrap())
        );
        assert!(matches!(
            Shard::from_slurm_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "9"),
                ("SLURM_ARRAY_TASK_COUNT", "3")
            ])),
            Err(ShardError::SlurmRange { .. })
        ));
        assert!(matches!(
            Shard::from_slurm_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "x"),
                ("SLURM_ARRAY_TASK_COUNT", "3")
            ])),
            Err(ShardError::SlurmVar { .. })
        ));
    }
}
