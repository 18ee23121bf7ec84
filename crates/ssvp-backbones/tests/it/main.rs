//! Integration tests of ssvp-backbones, in one binary (candle and the fixtures' towers are linked
//! once, not once per file).

mod clip_errors;
mod clip_parity;
mod dinov2_errors;
mod dinov2_parity;
mod dinov3_errors;
mod dinov3_parity;
mod early_stop;
mod error_kinds;
mod tokenizer;
mod weights_source;

/// An error and its sources joined by ": ", the way the CLI prints an error chain.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
