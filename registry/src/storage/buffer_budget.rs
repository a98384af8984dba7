//! The memory that uploads in flight may hold in full-size write buffers,
//! shared by every driver's appenders. Past it, an upload gets small
//! buffers (slower, but bounded): memory stays bounded however many clients
//! stall mid-upload (`--upload-buffer-mib`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default of [`set`].
pub const DEFAULT: usize = 128 << 20;

static BUDGET: OnceLock<usize> = OnceLock::new();
static USED: AtomicUsize = AtomicUsize::new(0);

/// Sets the budget in bytes. Takes effect only before the first upload.
pub fn set(bytes: usize) {
    let _ = BUDGET.set(bytes);
}

/// Reserves `want` bytes if the budget allows; returns what was reserved
/// (`want` or 0), to hand back with [`release`].
pub fn reserve(want: usize) -> usize {
    let cap = *BUDGET.get_or_init(|| DEFAULT);
    let reserved = USED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
        (used + want <= cap).then_some(used + want)
    });
    if reserved.is_ok() { want } else { 0 }
}

/// Returns bytes reserved by [`reserve`].
pub fn release(bytes: usize) {
    USED.fetch_sub(bytes, Ordering::AcqRel);
}
