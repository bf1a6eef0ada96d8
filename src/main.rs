//! The `velo` binary: parse, run, print the error chain, exit. The only exit point.

use std::process::ExitCode;

use clap::Parser;

use velo::cli::Cli;
use velo::ops::Ctx;
use velo::state::Store;
use velo::ui::Shell;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let shell = Shell::default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(
                &shell,
                &anyhow::Error::new(e).context("starting the async runtime"),
            );
        }
    };
    let result = runtime.block_on(async {
        let ctx = Ctx::new(Store::default_dir(), shell.clone())?;
        cli.run(&ctx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&shell, &e),
    }
}

/// Prints `error: …` and then each cause as `caused by: …`.
fn report(shell: &Shell, err: &anyhow::Error) -> ExitCode {
    shell.note(&format!("error: {err}"));
    for cause in err.chain().skip(1) {
        shell.note(&format!("caused by: {cause}"));
    }
    ExitCode::FAILURE
}
