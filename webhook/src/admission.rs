//! admission (work in progress)
