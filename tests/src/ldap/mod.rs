//! OpenLDAP on the bed: a real slapd Mirror-Mode pair (`slapd`), LDAP connections to it
//! (`conn`), the rigs that put electors in front of it (`rig`, `writer`) and the divergence
//! scenario (`divergence`).
pub mod conn;
pub mod divergence;
pub mod rig;
pub mod slapd;
pub mod writer;
