//! Splitting one batch input over N workers (`rllr batch --shard I/N`), e.g. the pods of a
//! Kubernetes Indexed Job, with no overlap and nothing left out.
//!
//! A record belongs to shard `fnv1a64(id) % N`. Hashing the id (not the line position) keeps every
//! assignment when the input is re-ordered or appended to, so a rerun of one pod resumes the same
//! records; FNV-1a is fixed by its definition (unlike `std`'s `DefaultHasher`, which may change
//! between Rust releases). The filter runs after validation and de-duplication, so the shards of
//! one input are disjoint and together hold exactly its valid records; `rllr merge`
//! ([`crate::merge`]) checks that on the way back.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The environment variable Kubernetes sets to the pod's index in an Indexed Job.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

/// Shard `index` of `count` (0 ≤ index < count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// FNV-1a, 64 bit: a stable hash of the record id.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard (of `count`) that record `id` belongs to.
pub fn shard_of(id: &str, count: u32) -> u32 {
    (fnv1a64(id.as_bytes()) % u64::from(count.max(1))) as u32
}

impl Shard {
    /// Shard `index` of `count`, checked.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 {
            return Err("the shard count N must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range: it must be 0 ≤ I < N = {count}"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether record `id` belongs to this shard.
    pub fn contains(&self, id: &str) -> bool {
        shard_of(id, self.count) == self.index
    }

    /// Parse `I/N`, where `I` may be `auto`: the index is then read from `index_env` (the
    /// value of `JOB_COMPLETION_INDEX`, passed in so tests need not touch the environment).
    pub fn parse_with(s: &str, index_env: Option<&str>) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not I/N (e.g. 0/4, or auto/4 in an Indexed Job)"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("the shard count '{n}' in '{s}' is not a whole number"))?;
        let index: u32 = if i.trim() == "auto" {
            let v = index_env.ok_or_else(|| {
                format!("'{s}' asks for the index from {JOB_COMPLETION_INDEX}, which is not set (it is set in a Kubernetes Indexed Job)")
            })?;
            v.trim()
                .parse()
                .map_err(|_| format!("{JOB_COMPLETION_INDEX}='{v}' is not a whole number"))?
        } else {
            i.trim()
                .parse()
                .map_err(|_| format!("the shard index '{i}' in '{s}' is not a whole number"))?
        };
        Shard::new(index, count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        Shard::parse_with(s, std::env::var(JOB_COMPLETION_INDEX).ok().as_deref())
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_index_and_auto() {
        assert_eq!(
            Shard::parse_with("2/5", None),
            Ok(Shard { index: 2, count: 5 })
        );
        assert_eq!(
            Shard::parse_with("auto/3", Some("1")),
            Ok(Shard { index: 1, count: 3 })
        );
        assert_eq!(Shard::parse_with("0/1", None).unwrap().to_string(), "0/1");
    }

    #[test]
    fn rejects_bad_shards_with_a_reason() {
        for (s, env, want) in [
            ("3/3", None, "out of range"),
            ("0/0", None, "at least 1"),
            ("1", None, "not I/N"),
            ("x/2", None, "index 'x'"),
            ("1/y", None, "count 'y'"),
            ("-1/2", None, "index '-1'"),
            ("auto/2", None, "not set"),
            ("auto/2", Some("2"), "out of range"),
            ("auto/2", Some("a"), "JOB_COMPLETION_INDEX='a'"),
        ] {
            let e = Shard::parse_with(s, env).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn assignment_is_fixed_by_the_hash() {
        // FNV-1a 64 test vectors, then fixed ids: these must never change between releases.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("a", 4), (0xaf63_dc4c_8601_ec8c_u64 % 4) as u32);
        assert_eq!(shard_of("a", 4), 0);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn shards_are_disjoint_and_cover_every_id() {
        let ids: Vec<String> = (0..1000).map(|i| format!("rec-{i}")).collect();
        for n in [1u32, 2, 3, 7] {
            let mut seen = vec![0u32; ids.len()];
            for i in 0..n {
                let s = Shard::new(i, n).unwrap();
                let mine: Vec<usize> = (0..ids.len()).filter(|&k| s.contains(&ids[k])).collect();
                // Roughly balanced: no shard empty for 1000 ids.
                assert!(!mine.is_empty(), "shard {s} empty");
                for k in mine {
                    seen[k] += 1;
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "n={n}: every id in exactly one shard"
            );
        }
    }
}
