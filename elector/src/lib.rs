//! ldap-elector: Lease-based leader election for an OpenLDAP Mirror-Mode pair.
//!
//! Pure cores (`election::decide`, the patch and Lease transformations, the audit's
//! judgement) are kept apart from the edges that do I/O (`election::run`,
//! `election::lease::LeaseClient`, `election::labels::PodLabeler`, `slapd`). The names and
//! value syntax shared with the webhook live in the `ldap-elector-contract` crate.
pub mod app;
pub mod cli;
pub mod clock;
pub mod divergence;
pub mod election;
pub mod observe;
pub mod slapd;
