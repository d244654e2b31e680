//! What runs on the bed: our binaries (`build`), StatefulSets of real electors (`electors`),
//! the in-process webhook (`webhook`), the objects tests create (`fixtures`), the chart's
//! admission policies (`policies`) and the elector's status report (`status`).
pub mod build;
pub mod electors;
pub mod fixtures;
pub mod nubus;
pub mod policies;
pub mod status;
pub mod webhook;
