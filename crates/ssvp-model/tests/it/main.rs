//! The integration tests of ssvp-model, one binary: the config, the frozen towers as the head
//! uses them, the head against the PyTorch references, initialisation and checkpoints, the
//! prompt encoder, training and resume, and the errors of run directories.

mod common;
mod config;
mod errors;
mod features;
mod head_parity;
mod init_and_io;
mod prompt_encoder;
mod train_resume;
