//! What the elector tells the outside: metrics, Events, its pod's annotations, and the
//! kubelet's probes.
pub mod handover;
pub mod http;
pub mod metrics;
pub mod probe;
pub mod publish;
