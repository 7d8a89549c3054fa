//! Rollouts and the passes over them: sampling responses from the policy adapter (docs/method.md
//! §5.4.1), and the batched forwards that read per-token log-probs (policy or reference), per-token
//! values (value adapter + head) and last-token rewards (a reward model's adapter + head) of
//! query ⊕ response sequences. Everything here is a pure function of the model, the adapter named
//! and a dropout seed, so a resumed run replays the same numbers.

use candle_core::{Tensor, D};
use rllr_core::{generate, Batch, ForwardCtx, GenerationRequest, Llama, PaddingSide};
use tokenizers::Tokenizer;

use rllr_core::{SamplingParams, StopCriteria};

/// One sampled response to one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Index of the prompt in the training set.
    pub item: usize,
    pub query: Vec<u32>,
    /// Generated ids, the stopping EOS kept (never empty).
    pub response: Vec<u32>,
    /// Decoded response text (empty without a tokenizer).
    pub text: String,
}

impl Rollout {
    /// query ⊕ response.
    pub fn sequence(&self) -> Vec<u32> {
        let mut s = self.query.clone();
        s.extend_from_slice(&self.response);
        s
    }
}

/// How rollouts are sampled.
pub struct RolloutSpec<'a> {
    /// The sampling adapter (`None`: the bare base, e.g. M_sft itself).
    pub adapter: Option<&'a str>,
    pub sampling: SamplingParams,
    pub stop: StopCriteria,
    pub pad: u32,
}

/// Sample one response per prompt (eval mode, batched); request `i` is seeded by `seeds[i]`.
pub fn sample(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    prompts: &[(usize, Vec<u32>)],
    seeds: &[u64],
    spec: &RolloutSpec,
) -> anyhow::Result<Vec<Rollout>> {
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .zip(seeds)
        .map(|((_, q), &seed)| GenerationRequest {
            prompt: q.clone(),
            sampling: SamplingParams {
                seed,
                ..spec.sampling.clone()
            },
            stop: spec.stop.clone(),
        })
        .collect();
    let out = generate(
        model,
        tokenizer,
        &requests,
        &ForwardCtx {
            adapter: spec.adapter,
            dropout_seed: None,
        },
        spec.pad,
    )?;
    Ok(prompts
        .iter()
        .zip(out)
        .map(|((item, q), g)| Rollout {
            item: *item,
            query: q.clone(),
            text: g.text.unwrap_or_default(),
            response: g.tokens,
        })
        .collect())
}

/// A right-padded batch of query ⊕ response and the flat row index of every position that
/// predicts a response token (row r·L + |q| − 1 + t), in rollout order.
pub struct SeqBatch {
    pub batch: Batch,
    pub rows: Vec<u32>,
    pub targets: Vec<u32>,
    /// Response length of each rollout (its share of `rows`).
    pub lens: Vec<usize>,
}

impl SeqBatch {
    pub fn new(rollouts: &[&Rollout], pad: u32, model: &Llama) -> anyhow::Result<Self> {
        let seqs: Vec<Vec<u32>> = rollouts.iter().map(|r| r.sequence()).collect();
        let batch = Batch::new(&seqs, pad, PaddingSide::Right, model.device())?;
        let l = batch.seq_len();
        let (mut rows, mut targets, mut lens) = (Vec::new(), Vec::new(), Vec::new());
        for (b, r) in rollouts.iter().enumerate() {
            let q = r.query.len();
            for (t, &tok) in r.response.iter().enumerate() {
                rows.push((b * l + q - 1 + t) as u32);
                targets.push(tok);
            }
            lens.push(r.response.len());
        }
        Ok(Self {
            batch,
            rows,
            targets,
            lens,
        })
    }

    /// Hidden states at the response-predicting positions, (N, hidden).
    pub fn response_hidden(&self, model: &Llama, ctx: &ForwardCtx) -> anyhow::Result<Tensor> {
        let h = model.hidden_states(&self.batch, ctx)?;
        let (b, l, hidden) = h.dims3()?;
        let idx = Tensor::new(self.rows.as_slice(), h.device())?;
        Ok(h.reshape((b * l, hidden))?.index_select(&idx, 0)?)
    }

    /// log π(response token) at every response position, (N,) f32, differentiable.
    pub fn logprobs(&self, model: &Llama, ctx: &ForwardCtx) -> anyhow::Result<Tensor> {
        let h = self.response_hidden(model, ctx)?;
        let logits = model.lm_logits(&h)?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let t = Tensor::new(self.targets.as_slice(), lp.device())?;
        Ok(lp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?)
    }

    /// Values of head `head` read through `ctx` at every response position, (N,) f32; with
    /// `head_dropout` the hidden state is dropped out first (TRL's ValueHead, train mode).
    pub fn values(
        &self,
        model: &Llama,
        ctx: &ForwardCtx,
        head: &str,
        head_dropout: Option<(f32, u64)>,
    ) -> anyhow::Result<Tensor> {
        let mut h = self.response_hidden(model, ctx)?;
        if let Some((p, seed)) = head_dropout.filter(|(p, _)| *p > 0.0) {
            h = rllr_core::lora::dropout(&h, p, seed)?;
        }
        let head = model
            .head(head)
            .ok_or_else(|| anyhow::anyhow!("no score head '{head}'"))?;
        Ok(head.forward(&h)?)
    }

    /// Last-token score of head `head` through `ctx` (a reward model), one per rollout.
    pub fn scores(&self, model: &Llama, ctx: &ForwardCtx, head: &str) -> anyhow::Result<Vec<f64>> {
        let h = model.hidden_states(&self.batch, ctx)?;
        let s = model.score(&h, &self.batch, head)?;
        Ok(s.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    }

    /// Split a flat (N,) vector into per-rollout pieces.
    pub fn split(&self, flat: &[f32]) -> Vec<Vec<f64>> {
        let mut out = Vec::with_capacity(self.lens.len());
        let mut at = 0;
        for &n in &self.lens {
            out.push(flat[at..at + n].iter().map(|&x| f64::from(x)).collect());
            at += n;
        }
        out
    }
}
