//! `orchestrator`: N runner loops on this host. See `orchestrator --help`.

use std::process::ExitCode;

use clap::Parser;
use ghrm::cli::{verbosity, OrchestratorCli};
use ghrm::logging;
use protocol::exit;

fn main() -> ExitCode {
    ghrm::orchestrator::args::reexec_without_secrets(true);
    let _ = dotenvy::dotenv();
    let mut cli = match OrchestratorCli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::ENDED
            });
        }
    };
    let verbose = verbosity(cli.verbose, "ORCHESTRATOR_VERBOSE");
    if let Err(e) = logging::init(verbose, cli.log.as_deref(), "orchestrator", cli.log_format) {
        eprintln!("orchestrator: error: cannot open the log file given with -l: {e}");
        return ExitCode::from(exit::USAGE);
    }
    if let Some(command) = cli.command.take() {
        let run = ghrm::cli::subcommand(command, &cli)
            .and_then(|c| ghrm::orchestrator::subcommand(c, cli.runners));
        return match run {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                logging::report("orchestrator", &e);
                ExitCode::from(e.exit_code())
            }
        };
    }
    match ghrm::cli::orchestrator_config(&cli, verbose).and_then(ghrm::orchestrator::main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::report("orchestrator", &e);
            ExitCode::from(e.exit_code())
        }
    }
}
