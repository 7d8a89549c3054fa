//! `KvCache`: keys and values of past tokens, per layer, for batched incremental decoding.
//!
//! Rows are sequences and columns are cache slots. Every row keeps a validity flag and a position
//! per slot, so rows of different lengths share one rectangular tensor: left-padded prompts, rows
//! that joined later (padded on the left), and rows at different positions all decode together.
//! Finished rows leave with [`KvCache::retain`]; new rows join with [`KvCache::join`].
//!
//! Keys and values live in preallocated buffers whose time capacity grows geometrically, so a
//! decode step writes its one new column in place instead of copying the whole cache (`cat`).

use candle_core::{Tensor, D};

use crate::{Error, Result};

/// Time capacity of a layer's first buffer, at least.
const MIN_CAPACITY: usize = 64;

/// One layer's keys and values: (B, KV heads, capacity, head_dim) buffers, the first `len`
/// columns in use.
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerKv {
    /// Buffers of capacity `cap` ≥ len holding `k`, `v` (B, H, len, D).
    fn with_capacity(k: &Tensor, v: &Tensor, cap: usize) -> Result<Self> {
        let buffer = |x: &Tensor| -> Result<Tensor> {
            let (b, h, _, d) = x.dims4()?;
            let buf = Tensor::zeros((b, h, cap, d), x.dtype(), x.device())?;
            buf.slice_set(&x.contiguous()?, 2, 0)?;
            Ok(buf)
        };
        Ok(Self {
            k: buffer(k)?,
            v: buffer(v)?,
            len: k.dim(2)?,
        })
    }

    fn from_views(k: &Tensor, v: &Tensor) -> Result<Self> {
        Self::with_capacity(k, v, capacity_for(k.dim(2)?))
    }

    /// The (B, H, len, D) keys and values in use (views into the buffers).
    fn views(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }

    /// Write `k`, `v` (B, H, n, D) after the columns in use, growing the buffers if needed.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let n = k.dim(2)?;
        if self.len + n > self.k.dim(2)? {
            let (ok, ov) = self.views()?;
            let grown = Self::with_capacity(&ok, &ov, capacity_for(self.len + n))?;
            *self = grown;
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += n;
        Ok(())
    }

    /// A deep copy (the buffers are written in place, so clones must not share them).
    fn deep_clone(&self) -> Result<Self> {
        Ok(Self {
            k: self.k.copy()?,
            v: self.v.copy()?,
            len: self.len,
        })
    }
}

/// Geometric growth: the next power of two holding `len`, at least [`MIN_CAPACITY`].
fn capacity_for(len: usize) -> usize {
    len.next_power_of_two().max(MIN_CAPACITY)
}

/// Per-layer (B, KV heads, T, head_dim) keys and values plus per-slot metadata.
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    valid: Vec<Vec<bool>>,
    positions: Vec<Vec<u32>>,
}

impl Clone for KvCache {
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref()
                    .map(|l| l.deep_clone().expect("copying a KV cache buffer"))
            })
            .collect();
        Self {
            layers,
            valid: self.valid.clone(),
            positions: self.positions.clone(),
        }
    }
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
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

    /// Append layer `i`'s new keys and values (B, H, n, D); returns all of them, (B, H, T, D).
    pub(crate) fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        match &mut self.layers[i] {
            Some(layer) => layer.append(k, v)?,
            slot => *slot = Some(LayerKv::from_views(k, v)?),
        }
        self.layers[i].as_ref().expect("just set").views()
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
        for layer in self.layers.iter_mut().flatten() {
            let ids = Tensor::new(idx.as_slice(), layer.k.device())?;
            layer.k = layer.k.index_select(&ids, 0)?;
            layer.v = layer.v.index_select(&ids, 0)?;
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
        for layer in self.layers.iter_mut().flatten() {
            let (k, v) = layer.views()?;
            let (k, v) = (
                k.narrow(2, first_used, t - first_used)?,
                v.narrow(2, first_used, t - first_used)?,
            );
            *layer = LayerKv::from_views(&k, &v)?;
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
                (Some(a), Some(b)) => {
                    let ((ka, va), (kb, vb)) = (a.views()?, b.views()?);
                    let k = Tensor::cat(&[&left_pad(&ka, t - ta)?, &left_pad(&kb, t - tb)?], 0)?;
                    let v = Tensor::cat(&[&left_pad(&va, t - ta)?, &left_pad(&vb, t - tb)?], 0)?;
                    Some(LayerKv::from_views(&k, &v)?)
                }
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
