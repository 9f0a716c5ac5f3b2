//! `runner`: one loop of ephemeral microVM GitHub runners. See `runner --help`.

use std::process::ExitCode;

use clap::Parser;
use ghrm::cli::{runner_config, verbosity, RunnerCli};
use ghrm::logging;
use ghrm::runner::{stop_on_signals, Loop, RunnerError};
use protocol::exit;

fn main() -> ExitCode {
    // Hidden helper of QEMU `--net-forward`: one process per guest connection.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--net-connect") {
        return match argv.get(2).map(|t| ghrm::backend::qemu::net_connect(t)) {
            Some(Ok(())) => ExitCode::SUCCESS,
            Some(Err(e)) => {
                eprintln!("runner --net-connect: {e}");
                ExitCode::from(exit::FAILED)
            }
            None => ExitCode::from(exit::USAGE),
        };
    }
    ghrm::orchestrator::args::reexec_without_secrets(false);
    // A .env in the working directory fills in what neither command line nor environment set.
    let _ = dotenvy::dotenv();
    let cli = match RunnerCli::try_parse() {
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
    let verbose = verbosity(cli.opts.verbose, "RUNNER_VERBOSE");
    let loop_no = cli.loop_id.first().cloned().unwrap_or_else(|| "1".into());
    let who = format!("runner {loop_no}");
    if let Err(e) = logging::init(verbose, cli.opts.log.as_deref(), &who, cli.opts.log_format) {
        eprintln!("{who}: error: cannot open the log file given with -l: {e}");
        return ExitCode::from(exit::USAGE);
    }
    ghrm::runner::events::init();
    let result = runner_config(
        &cli.opts,
        &cli.loop_id,
        std::env::var("RUNNER_PREFIX").ok(),
        std::env::var("RUNNER_ENVIRONMENT").ok(),
    )
    .map_err(RunnerError::from)
    .and_then(|mut cfg| {
        cfg.verbose = verbose;
        let isolation = std::env::var("RUNNER_ISOLATION").map_or(true, |v| v != "0");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RunnerError::Io("start the async runtime".into(), e))?;
        rt.block_on(async move {
            let stop = stop_on_signals()
                .map_err(|e| RunnerError::Io("install signal handlers".into(), e))?;
            Loop::new(cfg, isolation, stop).await?.run().await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::report(&who, &e);
            ghrm::runner::events::emit(&ghrm::types::status::LoopEvent::Failed {
                error: logging::chain(&e),
            });
            ExitCode::from(e.exit_code())
        }
    }
}
