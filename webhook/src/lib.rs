//! The ldap-elector admission webhook: pure injection, the admission handler, a generic
//! TLS server that knows nothing of admission, and the reconciler.
pub mod admission;
pub mod inject;
pub mod server;
pub mod tls;
