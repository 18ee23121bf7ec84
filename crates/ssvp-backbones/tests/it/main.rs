//! Integration tests of ssvp-backbones, in one binary (candle and the fixtures' towers are linked
//! once, not once per file).

mod clip_errors;
mod clip_parity;
mod dinov3_errors;
mod dinov3_parity;
mod early_stop;
mod tokenizer;
mod weights_source;
