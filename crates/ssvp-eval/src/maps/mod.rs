//! Anomaly maps after post-processing: reading and writing them as files ([`io`]) and cutting
//! them into defect regions ([`regions`]). Plain `f32` grids, no tensors.

pub mod io;
pub mod regions;
