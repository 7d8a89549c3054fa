//! Engine invariants on tiny random models: padding never changes a real token's output, KV-cache
//! decoding equals full recompute while sequences leave and join, and gradients reach every
//! trainable tensor (and nothing else).

use candle_core::{backprop::GradStore, DType, Device, Tensor, D};
use rllr_core::{Batch, Config, ForwardCtx, KvCache, Llama, LoraConfig, PaddingSide};

fn tiny_config(tied: bool) -> Config {
    serde_json::from_str(&format!(
        r#"{{"vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":{tied}}}"#
    ))
    .unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 13, 2, 7],
        vec![11, 3, 40, 41, 42, 43, 44, 8, 9],
        vec![60, 1],
    ]
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    rllr_core::numerics::max_abs_diff(a, b).unwrap()
}

/// Logits of each sequence run alone, (len, vocab).
fn alone(model: &Llama, seq: &[u32], ctx: &ForwardCtx) -> Tensor {
    let b = Batch::new(&[seq.to_vec()], 0, PaddingSide::Right, &Device::Cpu).unwrap();
    model.forward(&b, ctx).unwrap().squeeze(0).unwrap()
}

fn random_adapter(model: &mut Llama, name: &str, cfg: &LoraConfig, seed: u64) {
    model.add_adapter(name, cfg, seed).unwrap();
    for (_, var) in model.adapter_tensors(name).unwrap() {
        var.set(&Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

#[test]
fn padding_side_never_changes_real_token_outputs() {
    for tied in [true, false] {
        let model = Llama::random(&tiny_config(tied), 1, DType::F32, &Device::Cpu).unwrap();
        let ctx = ForwardCtx::default();
        let seqs = prompts();
        for side in [PaddingSide::Left, PaddingSide::Right] {
            let batch = Batch::new(&seqs, 0, side, &Device::Cpu).unwrap();
            let logits = model.forward(&batch, &ctx).unwrap();
            let l = batch.seq_len();
            for (r, s) in seqs.iter().enumerate() {
                let offset = if side == PaddingSide::Left {
                    l - s.len()
                } else {
                    0
                };
                let got = logits.get(r).unwrap().narrow(0, offset, s.len()).unwrap();
                let d = max_abs_diff(&got, &alone(&model, s, &ctx));
                assert!(d < 1e-5, "tied={tied} {side:?} row {r}: max |Δ| {d}");
            }
        }
    }
}

#[test]
fn kv_cache_decoding_equals_full_recompute_as_rows_leave_and_join() {
    let mut model = Llama::random(&tiny_config(false), 2, DType::F32, &Device::Cpu).unwrap();
    random_adapter(
        &mut model,
        "policy",
        &LoraConfig {
            r: 4,
            ..Default::default()
        },
        3,
    );
    let ctx = ForwardCtx::with_adapter("policy");
    let mut seqs = prompts();
    let stop_after = [3usize, 9, 6, 4]; // rows finish at different steps (row 3 joins later)
    let batch = Batch::new(&seqs, 0, PaddingSide::Left, &Device::Cpu).unwrap();
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut logits = model.prefill(&batch, &mut cache, &ctx).unwrap();
    let mut live: Vec<usize> = vec![0, 1, 2];
    let mut prompt_len: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let mut joined = false;
    let mut step = 0;
    while !live.is_empty() {
        // check every live row against a full recompute of its whole sequence so far
        for (row, &seq) in live.iter().enumerate() {
            let full = alone(&model, &seqs[seq], &ctx);
            let last = full.get(seqs[seq].len() - 1).unwrap();
            let d = max_abs_diff(&logits.get(row).unwrap(), &last);
            assert!(d < 1e-4, "step {step} seq {seq}: max |Δ| {d}");
        }
        let next: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
        for (row, &seq) in live.iter().enumerate() {
            seqs[seq].push(next[row]);
        }
        step += 1;
        let keep: Vec<usize> = (0..live.len())
            .filter(|r| seqs[live[*r]].len() - prompt_len[live[*r]] < stop_after[live[*r]])
            .collect();
        let tokens: Vec<u32> = keep.iter().map(|r| next[*r]).collect();
        cache.retain(&keep).unwrap();
        live = keep.iter().map(|r| live[*r]).collect();
        if live.is_empty() {
            break;
        }
        logits = model.decode_step(&tokens, &mut cache, &ctx).unwrap();
        if step == 2 && !joined {
            // a new request joins the running batch: prefill it alone, then join the caches
            joined = true;
            seqs.push(vec![17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28]);
            prompt_len.push(12);
            let b = Batch::new(&[seqs[3].clone()], 0, PaddingSide::Left, &Device::Cpu).unwrap();
            let mut c2 = KvCache::new(model.config().num_hidden_layers);
            let l2 = model.prefill(&b, &mut c2, &ctx).unwrap();
            cache.join(c2).unwrap();
            logits = Tensor::cat(&[&logits, &l2], 0).unwrap();
            live.push(3);
        }
    }
    assert!(joined);
    assert_eq!(
        seqs[3].len(),
        12 + stop_after[3],
        "joined row decoded until its own stop"
    );
}

#[test]
fn gradients_reach_every_trainable_tensor_and_nothing_frozen() {
    let mut model = Llama::random(&tiny_config(true), 4, DType::F32, &Device::Cpu).unwrap();
    let all = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.1,
        target_modules: rllr_core::lora::TARGETABLE
            .iter()
            .map(|s| s.to_string())
            .collect(),
        use_rslora: false,
    };
    random_adapter(&mut model, "policy", &all, 5);
    random_adapter(&mut model, "frozen", &all, 6);
    model.set_adapter_trainable("frozen", false).unwrap();
    model.add_new_head("value", true, 7).unwrap();
    let batch = Batch::new(&prompts(), 0, PaddingSide::Right, &Device::Cpu).unwrap();
    let ctx = ForwardCtx {
        adapter: Some("policy"),
        dropout_seed: Some(11),
    };
    let hidden = model.hidden_states(&batch, &ctx).unwrap();
    let logits = model.lm_logits(&hidden).unwrap();
    let lm = logits.log_softmax_last().sum_all().unwrap();
    let value = model
        .score(&hidden, &batch, "value")
        .unwrap()
        .sum_all()
        .unwrap();
    let loss = (lm + value).unwrap();
    let grads: GradStore = loss.backward().unwrap();
    let trainable = model.trainable_vars();
    assert_eq!(
        trainable.len(),
        2 * 7 * 2 + 2,
        "policy A/B on 7 projections × 2 layers + head w/b"
    );
    for (name, var) in &trainable {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            n > 0.0 && n.is_finite(),
            "zero/non-finite gradient for {name}: {n}"
        );
    }
    for (name, t) in model.base_tensors() {
        assert!(
            grads.get(&t).is_none(),
            "frozen base tensor {name} got a gradient"
        );
    }
    for (name, var) in model.adapter_tensors("frozen").unwrap() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "frozen adapter tensor {name} got a gradient"
        );
    }
}

trait LogSoftmaxLast {
    fn log_softmax_last(&self) -> Tensor;
}
impl LogSoftmaxLast for Tensor {
    fn log_softmax_last(&self) -> Tensor {
        let w = Tensor::randn(0f32, 1.0, self.shape(), self.device()).unwrap();
        candle_nn::ops::log_softmax(self, D::Minus1)
            .unwrap()
            .mul(&w)
            .unwrap()
    }
}

#[test]
fn half_precision_runs_and_stays_close_to_f32() {
    let cfg = tiny_config(false);
    let f32m = Llama::random(&cfg, 9, DType::F32, &Device::Cpu).unwrap();
    let batch = Batch::new(&prompts(), 0, PaddingSide::Left, &Device::Cpu).unwrap();
    let reference = f32m.forward(&batch, &ForwardCtx::default()).unwrap();
    let scale = rllr_core::numerics::max_abs(&reference).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let m = Llama::random(&cfg, 9, dtype, &Device::Cpu).unwrap();
        let got = m.forward(&batch, &ForwardCtx::default()).unwrap();
        assert_eq!(got.dtype(), DType::F32, "logits come out in f32");
        let mut worst = 0f32;
        for (r, mask) in batch.valid.iter().enumerate() {
            for (c, real) in mask.iter().enumerate() {
                if *real {
                    let d = max_abs_diff(
                        &got.get(r).unwrap().get(c).unwrap(),
                        &reference.get(r).unwrap().get(c).unwrap(),
                    );
                    worst = worst.max(d);
                }
            }
        }
        assert!(
            worst < 0.05 * scale,
            "{dtype:?}: max |Δ| {worst} vs logit scale {scale}"
        );
    }
}

#[test]
fn an_adapter_chain_loads_as_its_merged_model() {
    use rllr_core::checkpoint::{load_adapter, load_merged, save_adapter, save_model};
    let tmp = tempfile::tempdir().unwrap();
    let mut model = Llama::random(&tiny_config(false), 3, DType::F32, &Device::Cpu).unwrap();
    save_model(&model, &tmp.path().join("base"), None, None, None).unwrap();
    let cfg = LoraConfig {
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        ..LoraConfig::default()
    };
    random_adapter(&mut model, "sft", &cfg, 4);
    // the shipped layout: the SFT adapter names its base relative to itself
    save_adapter(
        &model,
        "sft",
        None,
        "../base",
        &tmp.path().join("sft"),
        None,
    )
    .unwrap();
    let (merged, bottom) = load_merged(&tmp.path().join("sft"), DType::F32, &Device::Cpu, &|p| {
        Ok(p.to_path_buf())
    })
    .unwrap();
    assert_eq!(bottom.dir, tmp.path().join("sft/../base"));
    let seq = prompts()[1].clone();
    let want = alone(&model, &seq, &ForwardCtx::with_adapter("sft"));
    let got = alone(&merged, &seq, &ForwardCtx::default());
    let d = max_abs_diff(&want, &got);
    assert!(d < 1e-5, "merged chain differs by {d}");
    assert!(max_abs_diff(&want, &alone(&model, &seq, &ForwardCtx::default())) > 1e-3);
    // a confinement check refuses a link
    let refused = load_merged(&tmp.path().join("sft"), DType::F32, &Device::Cpu, &|_| {
        Err(rllr_core::Error::Input("outside the root".into()))
    });
    assert!(refused.is_err());
    // and an adapter loaded on top of the merged base works as usual
    let mut top = merged;
    save_adapter(&model, "sft", None, "../sft", &tmp.path().join("rm"), None).unwrap();
    load_adapter(&mut top, &tmp.path().join("rm"), "rm", false).unwrap();
    assert!(top.adapters().contains_key("rm"));
}
