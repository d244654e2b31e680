//! Divergence of the Mirror-Mode pair: the audit that compares the two servers, the
//! leader's auditor and its policy (when to audit, marks in the Lease), and reseeding.
pub mod audit;
pub mod auditor;
pub mod policy;
pub mod reseed;
