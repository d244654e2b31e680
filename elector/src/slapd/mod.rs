//! The local slapd: LDAP access, the write fence and its hook and watchdog, health checks
//! and the start-up configuration guard.
pub mod config_guard;
pub mod fence;
pub mod health;
pub mod hook;
pub mod ldap;
pub mod watchdog;
