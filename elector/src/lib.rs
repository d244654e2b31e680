//! ldap-elector: Lease-based leader election for an OpenLDAP Mirror-Mode pair.
//!
//! Pure cores (`decide`, `contract`) are separate from the edges that do I/O.
pub mod clock;
pub mod contract;
pub mod decide;
