//! The command line: flags and sub-commands, and the operator's `status` and `switchover`
//! commands with their pure assessment.
pub mod args;
pub mod assess;
pub mod operator;
pub mod uncovered;
