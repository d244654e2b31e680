//! ldap-elector: Lease-based leader election for an OpenLDAP Mirror-Mode pair.
//!
//! Pure cores (`decide`, the patch and Lease transformations) are kept apart
//! from the edges that do I/O (`run`, `lease::LeaseClient`, `labels::PodLabeler`).
pub mod args;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config_guard;
pub mod decide;
pub mod divergence_audit;
pub mod divergence_policy;
pub mod events;
pub mod fence;
pub mod health;
pub mod hook;
pub mod labels;
pub mod ldap;
pub mod lease;
pub mod ops;
pub mod probe;
pub mod publish;
pub mod reseed;
pub mod run;
pub mod status;
pub mod switchover;
pub mod watchdog;
