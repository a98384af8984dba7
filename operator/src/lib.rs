//! berth-operator: turns a `Registry` resource into a running registry that
//! every node trusts.
//!
//! Pure parts (the CRD types, certificate issuance, the desired child objects
//! and the status computation) are kept apart from the parts that talk to the
//! cluster, so most behaviour is tested without one.

pub mod apply;
pub mod auth;
pub(crate) mod certificates;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod credential_provider;
pub mod desired;
pub mod fixtures;
pub mod gc;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod node_agent;
pub mod pki;
pub mod status;
pub mod trust;
