use std::process::ExitCode;

use clap::Parser;
use ldap_elector::app;
use ldap_elector::cli::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::init_logging(cli.run.log_format);
    match cli.command.unwrap_or(Command::Run) {
        // One-shot tools: no pod identity, their own flags and exit codes.
        Command::Audit(args) => app::audit(*args),
        Command::Reseed(args) => app::reseed(*args),
        command @ (Command::Status(_) | Command::Switchover(_)) => app::operator_command(command),
        Command::Guard => app::guard(cli.run),
        Command::StartFenced(args) => app::start_fenced(&args),
        command @ (Command::Run | Command::Watchdog) => app::run(cli.run, command),
    }
}
