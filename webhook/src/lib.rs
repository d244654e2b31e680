//! The ldap-elector admission webhook: pure injection, the admission handler, a generic
//! TLS server that knows nothing of admission, and the reconciler.
pub mod admission;
pub mod app;
pub mod args;
pub mod cluster;
pub mod handler;
pub mod inject;
pub mod leader_service;
pub mod metrics;
pub mod reconcile;
pub mod server;
pub mod tls;
pub mod watches;
