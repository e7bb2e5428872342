//! `ferry`: the command line of ferry — the server, the demo, the benchmark, and the client
//! commands that drive the REST API. Thin: every decision lives in the library crates.

mod agent_run;
mod args;
mod bench;
mod client;
mod commands;
mod demo;
mod examples;
mod http;
mod output;
mod progress;
mod server;

use std::process::ExitCode;

fn main() -> ExitCode {
    let matches = examples::command().get_matches();
    let cli = match <args::Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // A server's shutdown leaves the VMs' writes that arrived after it stopped the streams
    // waiting on blocking threads (never acknowledged, sent again after a restart): exit
    // without waiting for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
