//! The serving certificate and its CA, as three steps: [`observe`] reads
//! the CA Secret, the CA bundle ConfigMap and the serving Secret (or the
//! user's Secret, or what cert-manager wrote) once and parses each
//! certificate once; [`plan()`] decides, purely, what to write, which Events
//! to publish, the certificate's state and when to look again; the
//! controller applies the plan.
//!
//! Keeping the decisions pure is what lets every rotation branch be pinned
//! by a unit test with a fixed clock and no cluster.

pub(crate) mod observe;
pub(crate) mod plan;

pub(crate) use observe::observe;
pub(crate) use plan::{CaWrite, Plan, plan};
