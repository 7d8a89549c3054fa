//! The registry of loaded models: a `DashMap` from name to a shared [`ModelEntry`].
//!
//! A request clones the entry's `Arc` once and keeps it to the end, so replacing a name (hot
//! reload) or unloading it never drops in-flight work: the old worker drains its queue and exits
//! when the last request holding it is done. Every model path is confined to the model root.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device};
use dashmap::DashMap;
use rllr_core::checkpoint::{self, Checkpoint};
use rllr_core::manifest::{Manifest, ModelKind};
use rllr_core::response::ResponseFormat;
use rllr_core::task::TaskSpec;
use rllr_core::template::ChatTemplate;
use tokenizers::Tokenizer;
use tokio::sync::watch;

use crate::batcher::{self, BatchSettings, QueueSender};
use crate::config::ServerConfig;
use crate::engine::{self, EngineSpec};
use crate::error::{Error, Result};
use crate::label_fork::{label_fork, LabelFork};
use crate::revision::HashCache;

/// A served model: what requests need to validate and tokenize, and its worker's queue.
pub struct ModelEntry {
    pub name: String,
    /// The checkpoint directory as resolved under the model root.
    pub dir: PathBuf,
    /// The path relative to the model root.
    pub rel_path: String,
    pub kind: ModelKind,
    pub task: Option<TaskSpec>,
    /// Label names, in order (empty: the model has no label set).
    pub labels: Vec<String>,
    /// Label texts as they appear on the answer line.
    pub label_texts: Vec<String>,
    pub template: ChatTemplate,
    pub format: ResponseFormat,
    /// The score head (reward/value models).
    pub head: Option<String>,
    pub base: String,
    pub tokenizer: Arc<Tokenizer>,
    /// EOS id appended to scored text when the template has no end-of-turn text.
    pub eos_id: Option<u32>,
    /// The padding id (the engine's; `/get_reward` strips its text from queries).
    pub pad_id: u32,
    /// Where the labels part ways in token space, spelled right after the prefix's space
    /// (`"label"`, index 0) and with the space (`" label"`, index 1).
    pub label_forks: [LabelFork; 2],
    pub dtype: String,
    pub device: String,
    /// Content hash of the files served (see `revision.rs`).
    pub revision: String,
    pub queue: QueueSender,
    pub alive: Arc<AtomicBool>,
}

impl ModelEntry {
    /// Whether the model can score (has a head).
    pub fn can_score(&self) -> bool {
        self.head.is_some()
    }

    /// Whether the model can generate classifications.
    pub fn can_generate(&self) -> bool {
        matches!(
            self.kind,
            ModelKind::Base | ModelKind::Sft | ModelKind::Policy
        )
    }

    /// Whether its worker is running.
    pub fn ready(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// All loaded models, plus what loading needs.
pub struct Registry {
    models: DashMap<String, Arc<ModelEntry>>,
    /// Load order, for defaults.
    order: std::sync::Mutex<Vec<String>>,
    root: PathBuf,
    cfg: Arc<ServerConfig>,
    device: Device,
    dtype: DType,
    changed: watch::Sender<u64>,
    /// Set by shutdown: lookups answer UNAVAILABLE (retry elsewhere), not NOT_FOUND.
    closed: std::sync::atomic::AtomicBool,
    hashes: HashCache,
}

impl Registry {
    /// An empty registry for `cfg` (the model root must exist).
    pub fn new(cfg: Arc<ServerConfig>) -> anyhow::Result<Self> {
        let root = cfg
            .model_root
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("model root {}: {e}", cfg.model_root.display()))?;
        let device = rllr_core::device::parse_device(&cfg.device)?;
        let dtype = rllr_core::device::parse_dtype(&cfg.dtype)?;
        Ok(Registry {
            models: DashMap::new(),
            order: std::sync::Mutex::new(Vec::new()),
            root,
            cfg,
            device,
            dtype,
            changed: watch::channel(0).0,
            closed: std::sync::atomic::AtomicBool::new(false),
            hashes: HashCache::default(),
        })
    }

    /// A receiver that changes whenever a model is loaded, unloaded or its worker stops.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// UNAVAILABLE once [`Registry::clear`] has closed the registry (shutdown).
    fn open(&self) -> Result<()> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Unavailable("the server is shutting down".into()));
        }
        Ok(())
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<ModelEntry>> {
        self.open()?;
        self.models
            .get(name)
            .map(|e| e.value().clone())
            .ok_or_else(|| Error::NotFound(format!("model '{name}' is not loaded")))
    }

    /// Every loaded model, in load order.
    pub fn list(&self) -> Vec<Arc<ModelEntry>> {
        let order = self.order.lock().expect("order lock").clone();
        order.iter().filter_map(|n| self.get(n).ok()).collect()
    }

    /// `name`, or the configured/first model that can score.
    pub fn reward_model(&self, name: &str) -> Result<Arc<ModelEntry>> {
        self.pick(
            name,
            self.cfg.default_reward_model.as_deref(),
            ModelEntry::can_score,
            "reward",
        )
    }

    /// `name`, or the configured/first model that can generate.
    pub fn policy_model(&self, name: &str) -> Result<Arc<ModelEntry>> {
        self.pick(
            name,
            self.cfg.default_policy_model.as_deref(),
            ModelEntry::can_generate,
            "policy",
        )
    }

    fn pick(
        &self,
        name: &str,
        default: Option<&str>,
        able: fn(&ModelEntry) -> bool,
        what: &str,
    ) -> Result<Arc<ModelEntry>> {
        // Closed is UNAVAILABLE however the model is named (not "no model is loaded").
        self.open()?;
        let entry = if !name.is_empty() {
            self.get(name)?
        } else if let Some(d) = default {
            self.get(d)?
        } else {
            self.list()
                .into_iter()
                .find(|e| able(e))
                .ok_or_else(|| Error::NotFound(format!("no {what} model is loaded")))?
        };
        if !able(&entry) {
            return Err(Error::FailedPrecondition(format!(
                "model '{}' is a {:?} model and cannot serve as a {what} model",
                entry.name, entry.kind
            )));
        }
        Ok(entry)
    }

    /// Resolve `path` under the model root; anything that leaves it is PERMISSION_DENIED.
    pub fn resolve(&self, path: &str) -> Result<PathBuf> {
        if path.trim().is_empty() {
            return Err(Error::invalid(
                "path",
                "must name a checkpoint directory under the model root",
            ));
        }
        let p = Path::new(path);
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        };
        let canon = joined.canonicalize().map_err(|_| {
            if joined.starts_with(&self.root) && !path.contains("..") {
                Error::NotFound(format!(
                    "checkpoint '{path}' does not exist under the model root"
                ))
            } else {
                Error::PermissionDenied(format!("path '{path}' is outside the model root"))
            }
        })?;
        if !canon.starts_with(&self.root) {
            return Err(Error::PermissionDenied(format!(
                "path '{path}' is outside the model root"
            )));
        }
        Ok(canon)
    }

    /// Load the checkpoint at `path` (under the root) as `name`. With `replace`, an existing model
    /// of that name is swapped out after the new one is ready (hot reload). Blocking: call from a
    /// blocking thread.
    pub fn load(
        self: &Arc<Self>,
        name: &str,
        path: &str,
        replace: bool,
    ) -> Result<Arc<ModelEntry>> {
        if name.trim().is_empty() {
            return Err(Error::invalid("name", "must be non-empty"));
        }
        if !replace && self.models.contains_key(name) {
            return Err(Error::invalid(
                "name",
                format!("model '{name}' is already loaded (set replace to reload it)"),
            ));
        }
        let dir = self.resolve(path)?;
        let entry = Arc::new(self.build(name, &dir)?);
        let rel = entry.rel_path.clone();
        let old = self.models.insert(name.to_string(), entry.clone());
        {
            let mut order = self.order.lock().expect("order lock");
            if !order.iter().any(|n| n == name) {
                order.push(name.to_string());
            }
        }
        tracing::info!(model = name, path = %rel, revision = %entry.revision, reloaded = old.is_some(), "model loaded");
        self.notify();
        Ok(entry)
    }

    /// Remove `name`; its worker finishes the queued work and stops.
    pub fn unload(&self, name: &str) -> Result<()> {
        self.models
            .remove(name)
            .ok_or_else(|| Error::NotFound(format!("model '{name}' is not loaded")))?;
        self.order.lock().expect("order lock").retain(|n| n != name);
        tracing::info!(model = name, "model unloaded");
        self.notify();
        Ok(())
    }

    /// Drop every model (shutdown): workers drain and stop; later lookups are UNAVAILABLE, so
    /// clients retry on another endpoint instead of giving up on a missing model.
    pub fn clear(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.models.clear();
        self.order.lock().expect("order lock").clear();
        self.notify();
    }

    fn build(self: &Arc<Self>, name: &str, dir: &Path) -> Result<ModelEntry> {
        let is_adapter = checkpoint::is_adapter_dir(dir);
        let manifest = Manifest::read(dir)?;
        let (ckpt_dir, adapter) = if is_adapter {
            let base = checkpoint::adapter_base(dir)?;
            (
                self.resolve(&base.to_string_lossy())?,
                Some("adapter".to_string()),
            )
        } else {
            (dir.to_path_buf(), None)
        };
        // A base that is itself an adapter directory (M_sft shipped as an SFT adapter) is merged
        // into its own base, every link confined to the model root.
        let confine = |p: &Path| -> rllr_core::Result<PathBuf> {
            self.resolve(&p.to_string_lossy())
                .map_err(|e| rllr_core::Error::Input(e.to_string()))
        };
        let (mut model, ckpt) =
            checkpoint::load_merged(&ckpt_dir, self.dtype, &self.device, &confine)?;
        let revision = self.hashes.revision(&self.chain(dir)?)?;
        let manifest = manifest.or_else(|| ckpt.manifest.clone());
        if let Some(a) = &adapter {
            checkpoint::load_adapter(&mut model, dir, a, false)?;
        }
        let tokenizer = Checkpoint {
            dir: dir.to_path_buf(),
            ..ckpt.clone()
        }
        .load_tokenizer()
        .or_else(|_| ckpt.load_tokenizer())
        .map_err(|e| {
            Error::FailedPrecondition(format!("model '{name}' needs a tokenizer.json: {e}"))
        })?;
        let head = [
            manifest.as_ref().and_then(|m| m.head.clone()),
            adapter.clone(),
            Some(checkpoint::SCORE_HEAD.to_string()),
        ]
        .into_iter()
        .flatten()
        .find(|h| model.head(h).is_some());
        let kind = match &manifest {
            Some(m) => m.kind,
            None if head.is_some() => ModelKind::Reward,
            None => ModelKind::Base,
        };
        let task = manifest.as_ref().and_then(|m| m.task_spec.clone());
        let (labels, label_texts): (Vec<String>, Vec<String>) = match (&task, &manifest) {
            (Some(t), _) => t
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.display().to_string()))
                .unzip(),
            (None, Some(m)) => m.labels.iter().map(|l| (l.clone(), l.clone())).unzip(),
            _ => (Vec::new(), Vec::new()),
        };
        let prefix = task
            .as_ref()
            .map(|t| t.answer_prefix.clone())
            .or_else(|| manifest.as_ref().map(|m| m.answer_prefix.clone()))
            .unwrap_or_else(|| "Answer:".into());
        let format = ResponseFormat::new(prefix)?;
        let template = ChatTemplate::resolve(
            "auto",
            manifest.as_ref().and_then(|m| m.chat_template.as_ref()),
            ckpt.tokenizer_config().ok().flatten().as_ref(),
            &ckpt.dir.join("tokenizer_config.json").display().to_string(),
        )?;
        let mut eos_ids = ckpt.config.eos_ids();
        for s in template.stop_strings() {
            if let Some(id) = tokenizer.token_to_id(&s) {
                eos_ids.push(id);
            }
        }
        let eos_id = ckpt.config.eos_ids().first().copied();
        let pad_id = ckpt.config.pad_token_id.or(eos_id).unwrap_or(0);
        let ids = |text: &str| -> Vec<u32> {
            tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        };
        let label_forks = [String::new(), " ".to_string()].map(|lead| {
            let seqs: Vec<Vec<u32>> = label_texts
                .iter()
                .map(|l| ids(&format!("{lead}{l}")))
                .collect();
            label_fork(&seqs)
        });
        let settings = BatchSettings {
            max_batch_tokens: self.cfg.max_batch_tokens,
            max_batch_size: self.cfg.max_batch_size,
            max_delay: self.cfg.max_delay(),
        };
        let (queue, batcher) = batcher::queue(name, self.cfg.queue_capacity, settings);
        let alive = Arc::new(AtomicBool::new(true));
        let spec = EngineSpec {
            model: name.to_string(),
            head: head.clone(),
            adapter,
            pad_id,
            eos_ids,
            // both forks' label ids: the engine keeps their logits at every step
            label_first_ids: label_forks.iter().flat_map(|f| f.ids.clone()).collect(),
        };
        let weak = Arc::downgrade(self);
        engine::spawn(model, spec, batcher, alive.clone(), move || {
            if let Some(r) = weak.upgrade() {
                r.notify();
            }
        })
        .map_err(|e| Error::Unavailable(format!("cannot start the engine thread: {e}")))?;
        let rel_path = dir
            .strip_prefix(&self.root)
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned();
        Ok(ModelEntry {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            rel_path,
            kind,
            task,
            labels,
            label_texts,
            template,
            format,
            head,
            base: manifest
                .as_ref()
                .and_then(|m| m.base_checkpoint.clone())
                .unwrap_or_default(),
            tokenizer: Arc::new(tokenizer),
            eos_id,
            pad_id,
            label_forks,
            dtype: self.cfg.dtype.clone(),
            device: self.cfg.device.clone(),
            revision,
            queue,
            alive,
        })
    }

    /// `dir` and every base it builds on (adapter → base → ...), each confined to the model root.
    fn chain(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut dirs = vec![dir.to_path_buf()];
        while checkpoint::is_adapter_dir(dirs.last().expect("non-empty")) {
            let base = checkpoint::adapter_base(dirs.last().expect("non-empty"))?;
            let base = self.resolve(&base.to_string_lossy())?;
            if dirs.contains(&base) {
                return Err(Error::FailedPrecondition(format!(
                    "adapter bases loop at {}",
                    base.display()
                )));
            }
            dirs.push(base);
        }
        Ok(dirs)
    }
}
