//! The local slapd: LDAP access, the write fence and its hook, watchdog and guard, health checks
//! and the start-up configuration guard.
pub mod config_guard;
pub mod fence;
pub mod fence_guard;
pub mod health;
pub mod hook;
pub mod ldap;
pub mod watchdog;
