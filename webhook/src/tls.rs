//! tls (work in progress)
