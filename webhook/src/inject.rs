//! inject (work in progress)
