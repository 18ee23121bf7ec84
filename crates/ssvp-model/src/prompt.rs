//! [`ClipPromptEncoder`]: learnable prompt tokens through the frozen CLIP text tower.
//!
//! As Bayes-PFL does, each class gets the template `"X X … X <class name>."` with one placeholder
//! word per learnable token; the placeholders' token embeddings are replaced by the learnable
//! vectors, the text tower runs with autograd-capable ops, and the EOT state is projected into
//! the joint space. Because the tower is causal, the EOT state depends only on positions up to
//! EOT, so the padded tail (up to 77 tokens) is never computed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Tensor};
use ssvp_backbones::clip::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};
use ssvp_backbones::clip::ClipTextTransformer;
use ssvp_backbones::Grad;

use crate::error::{Error, Result};
use crate::vcpg::PromptTextEncoder;

/// The placeholder word that reserves one slot per learnable token.
pub const PLACEHOLDER: &str = "X";

/// A class's tokenised template, cut after EOT, and the frozen embeddings around the slots.
#[derive(Debug)]
pub struct PromptIds {
    /// `[SOT, X × L, class tokens…, ".", EOT]`.
    ids: Vec<u32>,
    /// Frozen token embeddings of `ids[..1]` (`[1, 1, W]`) and `ids[1 + L..]` (`[1, n − 1 − L, W]`).
    prefix: Tensor,
    suffix: Tensor,
}

/// Tokenised templates per (class name, number of slots), kept by whoever owns the text tower
/// so that encoders created per step share them.
#[derive(Debug, Default)]
pub struct PromptCache(Mutex<PromptMap>);

type PromptMap = HashMap<(String, usize), Arc<PromptIds>>;

/// The real `PromptTextEncoder`: splices the prompt tokens into CLIP's text tower.
pub struct ClipPromptEncoder<'a> {
    text: &'a ClipTextTransformer,
    tokenizer: &'a ClipTokenizer,
    cache: PromptCache,
}

impl<'a> ClipPromptEncoder<'a> {
    /// An encoder over `text` (usually [`crate::PromptEncoding::prompt_encoder`] builds it).
    /// It keeps the tokenised templates of the classes it encodes, so one encoder serves a
    /// whole training run or a detector's lifetime.
    pub fn new(text: &'a ClipTextTransformer, tokenizer: &'a ClipTokenizer) -> Self {
        Self {
            text,
            tokenizer,
            cache: PromptCache::default(),
        }
    }

    /// The template the learnable tokens are spliced into for `class_name` and `slots` tokens.
    pub fn template(class_name: &str, slots: usize) -> String {
        let mut text = vec![PLACEHOLDER; slots].join(" ");
        text.push(' ');
        text.push_str(class_name.trim());
        text.push('.');
        text
    }

    /// Token ids of the template, up to and including EOT.
    pub fn token_ids(&self, class_name: &str, slots: usize) -> Result<Vec<u32>> {
        Ok(self.prompt_ids(class_name, slots)?.ids.clone())
    }

    fn prompt_ids(&self, class_name: &str, slots: usize) -> Result<Arc<PromptIds>> {
        let key = (class_name.to_string(), slots);
        if let Some(hit) = self.lock_cache()?.get(&key) {
            return Ok(hit.clone());
        }
        let tokenizer = self.tokenizer;
        let cfg_err =
            |msg: String| Error::Config(format!("prompt for class `{class_name}`: {msg}"));
        if class_name.trim().is_empty() {
            return Err(cfg_err("the class name is empty".into()));
        }
        let text = Self::template(class_name, slots);
        let mut ids = tokenizer
            .tokenize(&text, CONTEXT_LENGTH, false)
            .map_err(|e| cfg_err(e.to_string()))?;
        let eot = ClipTokenizer::eot_position(&ids)
            .ok_or_else(|| cfg_err("tokenised prompt has no end-of-text token".into()))?;
        ids.truncate(eot + 1);
        // One placeholder token per slot, right after SOT (the class name may hold an `x` too,
        // but only after the slots).
        let placeholder = tokenizer
            .encode(PLACEHOLDER)
            .map_err(|e| cfg_err(e.to_string()))?;
        if placeholder.len() != 1
            || ids.len() < slots + 2
            || ids[1..=slots].iter().any(|&t| t != placeholder[0])
        {
            return Err(cfg_err(format!(
                "the template `{text}` does not start with {slots} single-token placeholders"
            )));
        }
        let all = Tensor::from_vec(ids.clone(), (1, ids.len()), self.text.device())?;
        let embeds = self.text.token_embedding(&all)?.detach();
        let prefix = embeds.narrow(1, 0, 1)?;
        let suffix = embeds.narrow(1, 1 + slots, ids.len() - 1 - slots)?;
        let entry = Arc::new(PromptIds {
            ids,
            prefix,
            suffix,
        });
        self.lock_cache()?.insert(key, entry.clone());
        Ok(entry)
    }

    fn lock_cache(&self) -> Result<MutexGuard<'_, PromptMap>> {
        self.cache
            .0
            .lock()
            .map_err(|_| Error::Config("prompt tokenisation cache lock poisoned".into()))
    }
}

impl PromptTextEncoder for ClipPromptEncoder<'_> {
    /// `prompt_tokens [P, L, W]` -> `[P, D]` (f32), differentiable w.r.t. `prompt_tokens`.
    fn encode(&self, class_name: &str, prompt_tokens: &Tensor) -> Result<Tensor> {
        let (p, slots, w) = prompt_tokens.dims3().map_err(|_| {
            Error::Shape(format!(
                "prompt tokens must be [prompts, tokens, width], got {:?}",
                prompt_tokens.dims()
            ))
        })?;
        let width = self.text.config().hidden_size;
        if w != width {
            return Err(Error::Shape(format!(
                "prompt tokens are {w} wide, the CLIP text tower's token embeddings {width}"
            )));
        }
        let entry = self.prompt_ids(class_name, slots)?;
        let n = entry.ids.len();
        let dtype = self.text.dtype();
        let prefix = entry.prefix.broadcast_as((p, 1, w))?;
        let suffix = entry.suffix.broadcast_as((p, n - 1 - slots, w))?;
        let embeds = Tensor::cat(&[&prefix, &prompt_tokens.to_dtype(dtype)?, &suffix], 1)?;
        let out = self
            .text
            .forward_embeds(&embeds, &vec![n - 1; p], &[], Grad::Tracked)?;
        Ok(out.text_embed.to_dtype(DType::F32)?)
    }
}
