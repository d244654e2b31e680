//! The contract of ldap-elector, shared by the elector, the webhook and the tests.
//!
//! [`names`] holds every annotation, label, environment variable, metric and Event name
//! (re-exported at the crate root, so `ldap_elector_contract::ANNOTATION_INJECT` is the one
//! definition). The other modules are the value syntax both sides must agree on and the
//! small edges both use, one concern each.
pub mod names;

pub use names::*;
pub mod api;
pub mod backoff;
pub mod check;
pub mod csn;
pub mod duration;
pub mod events;
pub mod peers;
pub mod prometheus;
