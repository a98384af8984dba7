//! Pure OCI types that validate on parse: nothing here does I/O.

pub mod digest;
pub mod manifest;
pub mod name;
pub mod range;

pub use digest::{Algorithm, Digest};
pub use name::{Name, Reference, Tag};
