//! `xtask`: the release and measurement tools of ldap-elector, one subcommand each, run by
//! the Makefile (`make sbom`, `make bench`, `make bench-node`, `make compare`, `make webhook-bench`,
//! `make audit-bench`, `make demo`). The measurements run on the real test bed of the
//! `ldap-elector-tests` crate; `make bed` runs that crate's own `testbed` binary (its e2e
//! test `getting_started` starts it as `CARGO_BIN_EXE_testbed`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod audit_bench;
mod bench;
mod bench_node;
mod compare;
mod demo;
mod sbom;
mod webhook_bench;

#[derive(Parser)]
#[command(name = "xtask", about = "Release and measurement tools of ldap-elector")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// CycloneDX 1.5 SBOMs of the shipped binaries, one file per binary in OUT_DIR.
    Sbom {
        #[arg(default_value = "results/sbom")]
        out_dir: PathBuf,
    },
    /// Failover latencies, API requests/min and RSS of the elector (`BENCH_RUNS`, `BENCH_WINDOW`).
    Bench,
    /// Fault latencies and sidecar memory of the consumer on the real node (root; `BENCH_RUNS`).
    BenchNode,
    /// ldap-elector side by side with client-go leader election -> results/compare-<date>.{md,svg}.
    Compare,
    /// Admission load on the release webhook pinned to one core, with a cert rotation.
    WebhookBench,
    /// `ldap-elector audit` on a converged pair preloaded with `AUDIT_BENCH_ENTRIES` entries.
    AuditBench,
    /// The whole story on a local bed, with a live timeline.
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Sbom { out_dir } => sbom::run(&out_dir),
        Task::Bench => bench::run(),
        Task::BenchNode => bench_node::run(),
        Task::Compare => compare::run(),
        Task::WebhookBench => webhook_bench::run(),
        Task::AuditBench => audit_bench::run(),
        Task::Demo => demo::run(),
    }
}
