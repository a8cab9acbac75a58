//! `trellis-demo`: one binary for every service of the demo.

use clap::Parser;
use trellis_demo::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One thread: each service is light, and `trellis up` runs several of
    // them (and their sidecars) on one machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellis-demo: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(trellis_demo::run::run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-demo: {e}");
            // 2, as trellis-proxy does for bad settings: not worth restarting.
            std::process::ExitCode::from(2)
        }
    }
}
