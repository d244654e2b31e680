//! Logging of the bed's tools (`testbed` and the xtask commands): `RUST_LOG`, else a
//! default filter that silences kube's client chatter; to stderr, so that what a tool
//! prints on stdout (tables, `export` lines) stays clean.

/// Installs the global subscriber once per process.
pub fn init(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
