//! The memory that uploads in flight may hold in full-size write buffers,
//! shared by every driver's appenders, and that large object storage reads
//! may hold in pieces fetched ahead ([`super::ranged_get`]). Past it, an
//! upload gets small buffers and a read one GET (slower, but bounded):
//! memory stays bounded however many clients stall mid-transfer
//! (`--upload-buffer-mib`).

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

/// Reserves `want` bytes only while at least half the budget would stay
/// free (`want` or 0): for reads ahead, which must not starve uploads.
pub fn reserve_spare(want: usize) -> usize {
    let cap = *BUDGET.get_or_init(|| DEFAULT);
    let reserved = USED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
        (used + want <= cap / 2).then_some(used + want)
    });
    if reserved.is_ok() { want } else { 0 }
}

/// Returns bytes reserved by [`reserve`] or [`reserve_spare`].
pub fn release(bytes: usize) {
    USED.fetch_sub(bytes, Ordering::AcqRel);
}
