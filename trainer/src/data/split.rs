//! Reproducible train/dev/test splits: deduplicate by normalised input text, order by a seeded
//! SHA-256 of that text, and cut.
//!
//! Ordering by a hash rather than by a PRNG shuffle makes the split independent of the `rand`
//! version and of the order rows were read in, so the bundled files are byte-identical on every
//! rerun, and an input lands in at most one split.

use std::collections::HashSet;

use rllr_core::dataset::Example;
use rllr_core::task::TaskInput;
use sha2::{Digest, Sha256};

/// How many examples go to each split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub train: usize,
    pub dev: usize,
    pub test: usize,
}

/// The default target: 2,000 train, 500 dev, 1,000 test.
pub const TARGET: Sizes = Sizes {
    train: 2000,
    dev: 500,
    test: 1000,
};

impl Sizes {
    /// `target` when `n` examples suffice, else `n` shared in the target's proportions.
    pub fn for_total(n: usize, target: Sizes) -> Sizes {
        let want = target.train + target.dev + target.test;
        if n >= want {
            return target;
        }
        let test = n * target.test / want;
        let dev = n * target.dev / want;
        Sizes {
            train: n - test - dev,
            dev,
            test,
        }
    }
}

/// The three splits of one task.
#[derive(Debug, Default)]
pub struct Splits {
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    /// Examples dropped because their normalised input was already seen.
    pub duplicates: usize,
}

/// Lowercase, keep letters and digits, one space between words: the identity of a text for
/// deduplication and for the train/test overlap check.
pub fn normalize(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The normalised text of an input (both texts of a pair).
pub fn input_key(input: &TaskInput) -> String {
    match input {
        TaskInput::Single(t) => normalize(t),
        TaskInput::Pair(a, b) => format!("{} || {}", normalize(a), normalize(b)),
    }
}

/// SHA-256 of the seed and a key: a stable pseudo-random rank.
pub fn rank_key(seed: u64, key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(key.as_bytes());
    h.finalize().into()
}

/// Deduplicate (first occurrence wins), order by seeded hash, cut test, dev, then train.
pub fn split(examples: Vec<Example>, target: Sizes, seed: u64) -> Splits {
    let mut seen = HashSet::new();
    let total = examples.len();
    let mut keyed: Vec<([u8; 32], Example)> = examples
        .into_iter()
        .filter_map(|ex| {
            let key = input_key(&ex.input);
            let rank = rank_key(seed, &key);
            seen.insert(key).then_some((rank, ex))
        })
        .collect();
    let duplicates = total - keyed.len();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let sizes = Sizes::for_total(keyed.len(), target);
    let mut it = keyed.into_iter().map(|(_, ex)| ex);
    let test = it.by_ref().take(sizes.test).collect();
    let dev = it.by_ref().take(sizes.dev).collect();
    let train = it.take(sizes.train).collect();
    Splits {
        train,
        dev,
        test,
        duplicates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(i: usize, text: &str) -> Example {
        Example {
            id: format!("x-{i}"),
            task: "t".into(),
            input: TaskInput::Single(text.into()),
            label: "a".into(),
            rationales: Default::default(),
        }
    }

    #[test]
    fn small_tasks_keep_the_proportions() {
        let s = Sizes::for_total(2000, TARGET);
        assert_eq!((s.train, s.dev, s.test), (1144, 285, 571));
        assert_eq!(Sizes::for_total(9000, TARGET), TARGET);
    }

    #[test]
    fn split_dedups_and_is_order_independent() {
        let mut rows: Vec<Example> = (0..40).map(|i| ex(i, &format!("Text {i}!"))).collect();
        rows.push(ex(99, "text 3")); // same normalised text as row 3
        let target = Sizes {
            train: 20,
            dev: 5,
            test: 10,
        };
        let a = split(rows.clone(), target, 7);
        rows.reverse();
        rows.retain(|e| e.id != "x-3"); // now the duplicate comes first and survives
        rows.push(ex(3, "Text 3!"));
        let b = split(rows, target, 7);
        assert_eq!(a.duplicates, 1);
        assert_eq!((a.train.len(), a.dev.len(), a.test.len()), (20, 5, 10));
        let keys = |v: &[Example]| v.iter().map(|e| input_key(&e.input)).collect::<Vec<_>>();
        assert_eq!(keys(&a.test), keys(&b.test));
        let c = split(
            (0..40).map(|i| ex(i, &format!("Text {i}!"))).collect(),
            target,
            8,
        );
        assert_ne!(keys(&a.test), keys(&c.test), "another seed, another split");
    }
}
