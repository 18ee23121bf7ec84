//! Integration tests of ssvp-serve, in one binary (the crates link candle once). The tests
//! that measure the process (resident memory, throughput, a drain's timing) run alone
//! ([`common::alone`]).

mod api;
mod common;
mod fuzz;
mod load;
mod openapi;
mod shutdown;
mod station;
mod station_ui;
