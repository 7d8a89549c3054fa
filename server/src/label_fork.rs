//! Where a task's labels part ways in token space ([`LabelFork`]): found once per model at load
//! (`registry.rs`), read when the label probabilities of a generation are worked out (`text.rs`).

/// Where a task's labels part ways in token space, for one spelling of them (right after the answer
/// prefix's space, or with a leading space): the tokens every label starts with, then each label's
/// own token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFork {
    pub prefix: Vec<u32>,
    pub ids: Vec<u32>,
}

/// The fork of the labels' token sequences: after their longest common prefix when every label has
/// a token there and those tokens are distinct; otherwise at the first token.
pub fn label_fork(seqs: &[Vec<u32>]) -> LabelFork {
    let first = |k: usize| -> Vec<u32> {
        seqs.iter()
            .map(|s| s.get(k).copied().unwrap_or(0))
            .collect()
    };
    let Some(shortest) = seqs.iter().map(Vec::len).min() else {
        return LabelFork::default();
    };
    let common = (0..shortest)
        .take_while(|&k| seqs.iter().all(|s| s[k] == seqs[0][k]))
        .count();
    let ids = first(common);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if common < shortest && sorted.len() == ids.len() {
        LabelFork {
            prefix: seqs[0][..common].to_vec(),
            ids,
        }
    } else {
        LabelFork {
            prefix: Vec::new(),
            ids: first(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fork_where_their_tokens_part() {
        // "Statement 1" / "Statement 2": a shared first token, then " 1" / " 2"
        let f = label_fork(&[vec![9, 4], vec![9, 5]]);
        assert_eq!(
            f,
            LabelFork {
                prefix: vec![9],
                ids: vec![4, 5]
            }
        );
        // distinct first tokens: the fork is at the start
        let f = label_fork(&[vec![1, 2], vec![3], vec![4, 5, 6]]);
        assert_eq!(
            f,
            LabelFork {
                prefix: vec![],
                ids: vec![1, 3, 4]
            }
        );
        // one label a prefix of another: fall back to the first tokens (equal shares)
        let f = label_fork(&[vec![7], vec![7, 8]]);
        assert_eq!(
            f,
            LabelFork {
                prefix: vec![],
                ids: vec![7, 7]
            }
        );
        // three labels where two share a longer prefix: no single fork, first tokens
        let f = label_fork(&[vec![7, 1], vec![7, 1, 2], vec![7, 3]]);
        assert_eq!(f.prefix, Vec::<u32>::new());
        assert_eq!(label_fork(&[]), LabelFork::default());
    }
}
