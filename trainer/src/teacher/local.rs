//! The `local` teacher: an rllr checkpoint (SmolLM2-135M-Instruct, or an SFT model) writing
//! rationales with the engine's batched generation, on this machine, for free.

use std::path::Path;

use candle_core::{DType, Device};
use rllr_core::checkpoint::Checkpoint;
use rllr_core::template::ChatTemplate;
use rllr_core::{generate, ForwardCtx, GenerationRequest, Llama, SamplingParams, StopCriteria};
use tokenizers::Tokenizer;

use super::{clean_rationale, prompt, RationaleRequest, Teacher, TeacherError};

/// Generation settings of the local teacher.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Prompts per generation batch.
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub seed: u64,
}

/// A loaded checkpoint that writes rationales.
pub struct LocalTeacher {
    model: Llama,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop: StopCriteria,
    pad: u32,
    config: LocalConfig,
    source: String,
}

impl LocalTeacher {
    /// Load `dir` on `device`; `template` as in `rllr-train generate` (`auto` reads rllr.json).
    pub fn load(
        dir: &Path,
        template: &str,
        device: &Device,
        config: LocalConfig,
    ) -> Result<Self, TeacherError> {
        let ckpt = Checkpoint::open(dir)?;
        let model = ckpt.load_model(DType::F32, device)?;
        let tokenizer = ckpt.load_tokenizer()?;
        let template = crate::stage::resolve_template(template, &ckpt)
            .map_err(|e| TeacherError::Config(format!("{e:#}")))?;
        let stop = StopCriteria {
            eos_ids: ckpt.config.eos_ids(),
            stop_strings: template.stop_strings(),
            max_new_tokens: config.max_new_tokens.max(1),
        };
        let pad = ckpt
            .config
            .pad_token_id
            .or(ckpt.config.eos_ids().first().copied())
            .unwrap_or(0);
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model");
        Ok(LocalTeacher {
            model,
            tokenizer,
            template,
            stop,
            pad,
            config,
            source: format!("local:{name}"),
        })
    }

    fn request(
        &self,
        req: &RationaleRequest<'_>,
        i: usize,
    ) -> Result<GenerationRequest, TeacherError> {
        let p = prompt(req)?;
        let text = self.template.render_prompt(Some(&p.system), &p.user);
        let ids = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(rllr_core::Error::from)?;
        Ok(GenerationRequest {
            prompt: ids.get_ids().to_vec(),
            sampling: SamplingParams {
                temperature: self.config.temperature,
                top_k: None,
                top_p: None,
                seed: self.config.seed.wrapping_add(i as u64),
            },
            stop: self.stop.clone(),
        })
    }

    fn run_chunk(&self, chunk: &[RationaleRequest<'_>]) -> Vec<Result<String, TeacherError>> {
        let built: Vec<Result<GenerationRequest, TeacherError>> = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| self.request(r, i))
            .collect();
        let ready: Vec<GenerationRequest> = built
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut generated = match generate(
            &self.model,
            Some(&self.tokenizer),
            &ready,
            &ForwardCtx::default(),
            self.pad,
        ) {
            Ok(g) => g.into_iter(),
            Err(e) => {
                let msg = e.to_string();
                return chunk
                    .iter()
                    .map(|_| Err(TeacherError::Transport(format!("generation failed: {msg}"))))
                    .collect();
            }
        };
        built
            .into_iter()
            .zip(chunk)
            .map(|(b, req)| {
                b?;
                let g = generated.next().expect("one generation per ready request");
                let text = self
                    .template
                    .stop_strings()
                    .iter()
                    .fold(g.text.unwrap_or_default(), |t, s| t.replace(s.as_str(), ""));
                clean_rationale(req.task, &text)
            })
            .collect()
    }
}

impl Teacher for LocalTeacher {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn rationalize(&self, batch: &[RationaleRequest<'_>]) -> Vec<Result<String, TeacherError>> {
        batch
            .chunks(self.config.batch_size.max(1))
            .flat_map(|c| self.run_chunk(c))
            .collect()
    }
}
