//! Where weights come from and how they are read.
//!
//! Loading a backbone is three steps, each in its own place:
//! 1. [`ModelSource`] turns what the user typed (`--weights`) into files on disk: a local file or
//!    directory as is, or a hub id fetched into the standard Hugging Face cache.
//! 2. [`Checkpoint`] reads every tensor of a safetensors file (single or sharded) or of a PyTorch
//!    zip checkpoint (`.bin`/`.pth`, parsed without executing pickle code).
//! 3. Each model's [`Renames`] (`clip/names.rs`, `dinov3/names.rs`) detects the [`NameScheme`]
//!    and renames foreign spellings onto the model's own (Hugging Face) paths, then
//!    [`Checkpoint::into_var_builder`] hands the tensors to the modules, with errors that name
//!    the missing or misshapen tensor and the file it was looked for in.

mod checkpoint;
pub mod fetch;
mod names;
mod seeded;
mod source;

pub use checkpoint::Checkpoint;
pub use names::{NameScheme, Renames};
pub use seeded::seeded_var_builder;
pub use source::{
    hub_cache_dir, resolve_hf_or_meta, HubSettings, ModelSource, ResolvedFiles, WantedFiles,
    HF_WEIGHTS_FILES,
};
