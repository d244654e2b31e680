//! Test support for ldap-elector: a real control plane on loopback (`bed`), a test
//! kubelet that runs pods as local processes (`kubelet`), and waiting helpers.
pub mod bed;
pub mod divergence;
pub mod electors;
pub mod fixtures;
pub mod forwarder;
pub mod kubelet;
pub mod ldap_rig;
pub mod measure;
pub mod node;
pub mod observer;
pub mod pki;
pub mod pod_network;
pub mod process;
pub mod proxy;
pub mod slapd;
pub mod status;
pub mod wait;
pub mod webhook;
pub mod webhook_load;
pub mod writer;

pub use bed::Bed;
pub use kubelet::Kubelet;
pub use wait::wait_for;
