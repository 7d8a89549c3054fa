//! `KvCache`: keys and values of past tokens, per layer, for batched incremental decoding.
//!
//! Rows are sequences and columns are cache slots. Every row keeps a validity flag and a position
//! per slot, so rows of different lengths share one rectangular tensor: left-padded prompts, rows
//! that joined later (padded on the left), and rows at different positions all decode together.
//! Finished rows leave with [`KvCache::retain`]; new rows join with [`KvCache::join`].

use candle_core::{Tensor, D};

use crate::{Error, Result};

/// Per-layer (B, KV heads, T, head_dim) keys and values plus per-slot metadata.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    valid: Vec<Vec<bool>>,
    positions: Vec<Vec<u32>>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            valid: Vec::new(),
            positions: Vec::new(),
        }
    }

    /// Rows (sequences) held.
    pub fn batch_size(&self) -> usize {
        self.valid.len()
    }

    /// Slots (columns) held.
    pub fn len(&self) -> usize {
        self.valid.first().map(Vec::len).unwrap_or(0)
    }

    /// True before the first prefill.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slot validity per row.
    pub fn valid(&self) -> &[Vec<bool>] {
        &self.valid
    }

    /// Slot positions per row.
    pub fn positions(&self) -> &[Vec<u32>] {
        &self.positions
    }

    /// The position the next token of each row takes (one past its last real token).
    pub fn next_positions(&self) -> Vec<u32> {
        self.valid
            .iter()
            .zip(&self.positions)
            .map(|(v, p)| {
                v.iter()
                    .zip(p)
                    .filter(|(v, _)| **v)
                    .map(|(_, p)| p + 1)
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    pub(crate) fn layer(&self, i: usize) -> Option<&(Tensor, Tensor)> {
        self.layers.get(i).and_then(Option::as_ref)
    }

    pub(crate) fn set_layer(&mut self, i: usize, k: Tensor, v: Tensor) {
        self.layers[i] = Some((k, v));
    }

    /// Record the metadata of the columns just appended by a forward pass.
    pub(crate) fn extend_meta(
        &mut self,
        valid: &[Vec<bool>],
        positions: &[Vec<u32>],
    ) -> Result<()> {
        if self.valid.is_empty() {
            self.valid = vec![Vec::new(); valid.len()];
            self.positions = vec![Vec::new(); valid.len()];
        }
        if valid.len() != self.valid.len() {
            return Err(Error::Input(format!(
                "cache holds {} sequences, the step has {}",
                self.valid.len(),
                valid.len()
            )));
        }
        for (row, (v, p)) in valid.iter().zip(positions).enumerate() {
            self.valid[row].extend_from_slice(v);
            self.positions[row].extend_from_slice(p);
        }
        Ok(())
    }

    /// Keep only `rows` (in that order): finished sequences leave the batch.
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(r) = rows.iter().find(|r| **r >= self.batch_size()) {
            return Err(Error::Input(format!(
                "row {r} out of range for a cache of {}",
                self.batch_size()
            )));
        }
        let idx: Vec<u32> = rows.iter().map(|r| *r as u32).collect();
        for (k, v) in self.layers.iter_mut().flatten() {
            let ids = Tensor::new(idx.as_slice(), k.device())?;
            *k = k.index_select(&ids, 0)?;
            *v = v.index_select(&ids, 0)?;
        }
        self.valid = rows.iter().map(|r| self.valid[*r].clone()).collect();
        self.positions = rows.iter().map(|r| self.positions[*r].clone()).collect();
        self.compact()
    }

    /// Drop leading columns no remaining row uses (after long rows leave).
    fn compact(&mut self) -> Result<()> {
        let t = self.len();
        let first_used = (0..t)
            .find(|c| self.valid.iter().any(|v| v[*c]))
            .unwrap_or(t);
        if first_used == 0 {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, first_used, t - first_used)?;
            *v = v.narrow(2, first_used, t - first_used)?;
        }
        for row in self.valid.iter_mut() {
            row.drain(..first_used);
        }
        for row in self.positions.iter_mut() {
            row.drain(..first_used);
        }
        Ok(())
    }

    /// Append the rows of `other` (e.g. freshly prefilled requests) below this cache's rows. The
    /// shorter cache is padded on the left with invalid slots, so every row's newest token stays
    /// in the last column.
    pub fn join(&mut self, other: KvCache) -> Result<()> {
        if self.batch_size() == 0 {
            *self = other;
            return Ok(());
        }
        if other.batch_size() == 0 {
            return Ok(());
        }
        if self.layers.len() != other.layers.len() {
            return Err(Error::Input(
                "caches of different models cannot be joined".into(),
            ));
        }
        let (ta, tb) = (self.len(), other.len());
        let t = ta.max(tb);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (a, b) in self.layers.iter().zip(other.layers) {
            layers.push(match (a, b) {
                (Some((ka, va)), Some((kb, vb))) => Some((
                    Tensor::cat(&[&left_pad(ka, t - ta)?, &left_pad(&kb, t - tb)?], 0)?,
                    Tensor::cat(&[&left_pad(va, t - ta)?, &left_pad(&vb, t - tb)?], 0)?,
                )),
                _ => {
                    return Err(Error::Input(
                        "cannot join a cache that was never filled".into(),
                    ))
                }
            });
        }
        self.layers = layers;
        let pad_rows = |rows: &mut Vec<Vec<bool>>, n: usize| {
            rows.iter_mut()
                .for_each(|r| r.splice(0..0, std::iter::repeat_n(false, n)).for_each(drop))
        };
        let pad_pos = |rows: &mut Vec<Vec<u32>>, n: usize| {
            rows.iter_mut()
                .for_each(|r| r.splice(0..0, std::iter::repeat_n(0, n)).for_each(drop))
        };
        pad_rows(&mut self.valid, t - ta);
        pad_pos(&mut self.positions, t - ta);
        let (mut ov, mut op) = (other.valid, other.positions);
        pad_rows(&mut ov, t - tb);
        pad_pos(&mut op, t - tb);
        self.valid.extend(ov);
        self.positions.extend(op);
        Ok(())
    }
}

/// Prepend `n` zero slots along the time axis (dim 2) of a (B, H, T, D) tensor.
fn left_pad(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 0 {
        return Ok(x.clone());
    }
    let (b, h, _, d) = x.dims4()?;
    let zeros = Tensor::zeros((b, h, n, d), x.dtype(), x.device())?;
    Ok(Tensor::cat(&[&zeros, x], D::Minus2)?)
}
