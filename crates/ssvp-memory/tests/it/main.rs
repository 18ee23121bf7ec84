//! Integration tests of ssvp-memory, in one binary (the same `tests/it` layout as the other
//! crates, so that a new test file joins this binary instead of linking its own).

mod reference;
