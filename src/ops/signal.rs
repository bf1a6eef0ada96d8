//! Interrupts: the first SIGINT or SIGTERM asks the running operation to roll back at its next
//! step; this module only keeps the flags (a leaf every other part of `ops` may use).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A signal asked this process to stop: operations roll back at their next step boundary.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How many operations this process has open (none: a signal may end it at once).
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

pub(super) fn opened() {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
}

pub(super) fn closed() {
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

/// Resolves once [`interrupt`] was called.
pub async fn until_interrupted() {
    while !interrupted() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal")]
pub struct Interrupted;
