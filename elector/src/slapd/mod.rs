//! The local slapd: LDAP access, the fenced database, the write fence and its hook, watchdog
//! and guard, health checks, the start-up configuration guard, the offline fence before slapd starts, and TLS to other slapds.
pub mod config_guard;
pub mod database;
pub mod fence;
pub mod fence_guard;
pub mod health;
pub mod hook;
pub mod ldap;
pub mod start_fenced;
pub mod tls;
pub mod watchdog;
