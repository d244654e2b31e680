//! The election: the pure decision, the Lease and the pod labels it writes, the loop that
//! carries it out, the pod's readiness, and planned handovers (switchover).
pub mod catch_up;
pub mod decide;
pub mod labels;
pub mod lease;
pub mod readiness;
pub mod run;
pub mod switchover;
