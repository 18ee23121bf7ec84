//! Integration tests of ssvp-image, in one binary (one link of the image codecs instead of one
//! per file).

mod decode_checked;
mod golden;
mod overlay_encode;
