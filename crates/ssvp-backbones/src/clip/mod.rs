//! OpenAI CLIP: vision tower (with optional AnomalyCLIP V-V attention), text tower, tokenizer.

pub mod tokenizer;
