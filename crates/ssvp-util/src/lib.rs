//! Leaf helpers shared by every ssvp crate. Nothing here knows about images, tensors or models:
//! a helper lands here when a second crate needs it, so that it exists once.

#![warn(missing_docs)]

pub mod error;
pub mod fs;
pub mod rng;
