//! `Batch`: token ids of several sequences padded to one length, with the validity mask and the
//! per-token positions that make padding invisible to real tokens.
//!
//! Trainers and the server build batches the same way, through [`Batch::new`]. Positions are counted
//! over real tokens only (`cumsum(mask) - 1`), so a left-padded and a right-padded batch give every
//! real token the same position, and therefore the same output.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Which side pads go on. Generation wants `Left` (all prompts end in the same column); training
/// usually uses `Right`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    Left,
    Right,
}

/// A padded batch of token sequences.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (B, L) u32 token ids; pads hold `pad_id`.
    pub input_ids: Tensor,
    /// Per row, per column: is this a real token?
    pub valid: Vec<Vec<bool>>,
    /// Per row, per column: the token's position (pads get a harmless clamped value).
    pub positions: Vec<Vec<u32>>,
}

impl Batch {
    /// Pad `seqs` to the longest one on `side` with `pad_id`.
    pub fn new(seqs: &[Vec<u32>], pad_id: u32, side: PaddingSide, device: &Device) -> Result<Self> {
        if seqs.is_empty() {
            return Err(Error::Input("batch is empty".into()));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(Error::Input(format!("sequence {i} of the batch is empty")));
        }
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len());
        let mut valid = Vec::with_capacity(seqs.len());
        for s in seqs {
            let pad = len - s.len();
            let (row, mask) = match side {
                PaddingSide::Left => (
                    std::iter::repeat_n(pad_id, pad)
                        .chain(s.iter().copied())
                        .collect::<Vec<_>>(),
                    std::iter::repeat_n(false, pad)
                        .chain(std::iter::repeat_n(true, s.len()))
                        .collect::<Vec<_>>(),
                ),
                PaddingSide::Right => (
                    s.iter()
                        .copied()
                        .chain(std::iter::repeat_n(pad_id, pad))
                        .collect(),
                    std::iter::repeat_n(true, s.len())
                        .chain(std::iter::repeat_n(false, pad))
                        .collect(),
                ),
            };
            ids.push(row);
            valid.push(mask);
        }
        Self::from_padded(ids, valid, device)
    }

    /// Build from already padded rows and their mask (e.g. a reference fixture).
    pub fn from_padded(ids: Vec<Vec<u32>>, valid: Vec<Vec<bool>>, device: &Device) -> Result<Self> {
        let b = ids.len();
        let l = ids.first().map(Vec::len).unwrap_or(0);
        if b == 0 || l == 0 {
            return Err(Error::Input("batch is empty".into()));
        }
        if ids.iter().any(|r| r.len() != l)
            || valid.len() != b
            || valid.iter().any(|r| r.len() != l)
        {
            return Err(Error::Input(
                "batch rows and mask must all have the same length".into(),
            ));
        }
        let positions = valid.iter().map(|m| positions_from_mask(m)).collect();
        let flat: Vec<u32> = ids.into_iter().flatten().collect();
        let input_ids = Tensor::from_vec(flat, (b, l), device)?;
        Ok(Self {
            input_ids,
            valid,
            positions,
        })
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.valid.len()
    }

    /// Padded length.
    pub fn seq_len(&self) -> usize {
        self.valid.first().map(Vec::len).unwrap_or(0)
    }

    /// Real tokens per row.
    pub fn lengths(&self) -> Vec<usize> {
        self.valid
            .iter()
            .map(|m| m.iter().filter(|v| **v).count())
            .collect()
    }

    /// Column of the last real token of each row (where scores and next-token logits are read).
    pub fn last_index(&self) -> Vec<usize> {
        self.valid
            .iter()
            .map(|m| m.iter().rposition(|v| *v).unwrap_or(0))
            .collect()
    }

    /// The validity mask as a (B, L) f32 tensor (1 real, 0 pad), e.g. for masked losses.
    pub fn mask_tensor(&self) -> Result<Tensor> {
        let flat: Vec<f32> = self
            .valid
            .iter()
            .flatten()
            .map(|v| f32::from(u8::from(*v)))
            .collect();
        Ok(Tensor::from_vec(
            flat,
            (self.batch_size(), self.seq_len()),
            self.input_ids.device(),
        )?)
    }
}

/// `cumsum(mask) - 1`, clamped at 0: real tokens count 0, 1, 2, ... whatever the padding.
pub fn positions_from_mask(mask: &[bool]) -> Vec<u32> {
    let mut seen = 0u32;
    mask.iter()
        .map(|v| {
            seen += u32::from(*v);
            seen.saturating_sub(1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_and_right_padding_give_real_tokens_the_same_positions() {
        let seqs = vec![vec![5, 6, 7], vec![8]];
        let l = Batch::new(&seqs, 0, PaddingSide::Left, &Device::Cpu).unwrap();
        let r = Batch::new(&seqs, 0, PaddingSide::Right, &Device::Cpu).unwrap();
        assert_eq!(
            l.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![0, 0, 8]]
        );
        assert_eq!(
            r.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![8, 0, 0]]
        );
        assert_eq!(l.positions[1], vec![0, 0, 0]);
        assert_eq!(l.last_index(), vec![2, 2]);
        assert_eq!(r.last_index(), vec![2, 0]);
        assert_eq!(l.lengths(), vec![3, 1]);
        assert_eq!(
            positions_from_mask(&[false, true, true, false]),
            vec![0, 0, 1, 1]
        );
    }

    #[test]
    fn empty_input_is_an_error_not_a_panic() {
        assert!(Batch::new(&[], 0, PaddingSide::Left, &Device::Cpu).is_err());
        let e = Batch::new(&[vec![1], vec![]], 0, PaddingSide::Left, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("sequence 1"));
    }
}
