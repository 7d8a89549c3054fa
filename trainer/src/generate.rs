//! `rllr-train generate`: answer prompts with a checkpoint, batched, through the model's chat
//! template — the smoke test of a converted or trained model, and the main job until the pipeline
//! exists.

use std::path::PathBuf;
use std::time::Instant;

use crate::stage::resolve_template;
use anyhow::{bail, Context};
use clap::Args;
use rllr_core::checkpoint::{self, Checkpoint};
use rllr_core::device::{parse_device, parse_dtype};
use rllr_core::{generate, ForwardCtx, GenerationRequest, SamplingParams, StopCriteria};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model directory (HF layout; e.g. models/smollm2-135m-instruct from scripts/fetch-smollm2.sh).
    #[arg(long, env = "RLLR_TRAIN_MODEL")]
    pub model: PathBuf,
    /// A prompt (the user turn). Repeat the flag to generate for several prompts in one batch.
    #[arg(long, required = true, num_args = 1)]
    pub prompt: Vec<String>,
    /// System text for the chat template (default: the template's own default).
    #[arg(long, env = "RLLR_TRAIN_SYSTEM")]
    pub system: Option<String>,
    /// Chat template: auto (rllr.json's, else the checkpoint's jinja chat_template), chatml, llama2,
    /// mistral, plain, or jinja (the checkpoint's tokenizer_config.json template, rendered).
    #[arg(long, env = "RLLR_TRAIN_TEMPLATE", default_value = "auto")]
    pub template: String,
    /// PEFT LoRA adapter directory to apply on top of the model (e.g. an SFT adapter).
    #[arg(long, env = "RLLR_TRAIN_ADAPTER")]
    pub adapter: Option<PathBuf>,
    /// Upper bound on generated tokens per prompt; generation also stops at EOS.
    #[arg(long, env = "RLLR_TRAIN_MAX_NEW_TOKENS", default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy (deterministic, what evaluation uses).
    #[arg(long, env = "RLLR_TRAIN_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens when sampling.
    #[arg(long, env = "RLLR_TRAIN_TOP_K")]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass.
    #[arg(long, env = "RLLR_TRAIN_TOP_P")]
    pub top_p: Option<f32>,
    /// Seed of the sampler, so sampled runs are reproducible.
    #[arg(long, env = "RLLR_TRAIN_SEED", default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or cuda:N (cuda needs a `--features cuda` build).
    #[arg(long, env = "RLLR_TRAIN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 compute dtype (half precision is for GPUs; on CPU f32 is fastest).
    #[arg(long, env = "RLLR_TRAIN_DTYPE", default_value = "f32")]
    pub dtype: String,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be >= 1");
    }
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let ckpt = Checkpoint::open(&args.model)
        .with_context(|| format!("opening --model {}", args.model.display()))?;
    let t0 = Instant::now();
    let mut model = ckpt.load_model(dtype, &device)?;
    let tokenizer = ckpt.load_tokenizer()?;
    let ctx = match &args.adapter {
        Some(dir) => {
            checkpoint::load_adapter(&mut model, dir, "adapter", false)
                .with_context(|| format!("loading --adapter {}", dir.display()))?;
            ForwardCtx::with_adapter("adapter")
        }
        None => ForwardCtx::default(),
    };
    let template = resolve_template(&args.template, &ckpt)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    let stop = StopCriteria {
        eos_ids: ckpt.config.eos_ids(),
        stop_strings: template.stop_strings(),
        max_new_tokens: args.max_new_tokens,
    };
    let requests = args
        .prompt
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text = template.try_render_prompt(args.system.as_deref(), p)?;
            let ids = tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing prompt {i}: {e}"))?;
            Ok(GenerationRequest {
                prompt: ids.get_ids().to_vec(),
                sampling: SamplingParams {
                    seed: args.seed.wrapping_add(i as u64),
                    ..sampling.clone()
                },
                stop: stop.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let pad = ckpt
        .config
        .pad_token_id
        .or(ckpt.config.eos_ids().first().copied())
        .unwrap_or(0);
    let out = generate(&model, Some(&tokenizer), &requests, &ctx, pad)?;
    let gen_s = t1.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
    for (prompt, g) in args.prompt.iter().zip(&out) {
        let text = g.text.clone().unwrap_or_default();
        let clean = template
            .stop_strings()
            .iter()
            .fold(text, |t, s| t.replace(s.as_str(), ""));
        println!("> {prompt}\n{}\n", clean.trim());
        eprintln!("  [{} tokens, finish: {:?}]", g.tokens.len(), g.finish);
    }
    eprintln!(
        "template {}, model loaded in {load_s:.1}s, {tokens} tokens in {gen_s:.2}s ({:.1} tok/s)",
        template.name(),
        tokens as f64 / gen_s
    );
    Ok(())
}
