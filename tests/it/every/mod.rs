//! Tests that hold on every backend, run by each suite on its own (`VELO_TEST_BACKEND`).

pub mod attacks;
mod branches;
mod concurrency;
mod crash;
mod drift;
mod failures;
mod hardening;
mod history;
mod lifetimes;
