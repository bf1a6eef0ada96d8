//! The `velo` binary: parse, run, print the error chain, exit. The only exit point.

use std::process::ExitCode;

use clap::Parser;

use velo::cli::{ChildExit, Cli, Command};
use velo::ops::{Ctx, recover, signal};
use velo::state::Store;
use velo::ui::Shell;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Parsed: the arguments' memory can now lose the passwords other users would see in it.
    velo::cli::hide_passwords();
    // SAFETY: no thread has started yet (the async runtime is built below).
    unsafe { velo::source::password::take_env_password() };
    let shell = Shell::default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(
                &shell,
                &anyhow::Error::new(e).context("starting the async runtime"),
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::spawn(watch_signals(shell.clone()));
        let ctx = Ctx::new(Store::default_dir(), shell.clone())?;
        // setup and doctor look at the host: they never act on a journal (run as root, they
        // might be run with a home someone else prepared). A background velo finishes only
        // the operation it was handed.
        if !matches!(
            cli.command,
            Command::Setup { .. } | Command::Doctor { .. } | Command::Background(_)
        ) {
            recover::recover(&ctx).await;
        }
        cli.run(&ctx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<ChildExit>() => {
            let code = e.downcast_ref::<ChildExit>().map_or(1, |c| c.0);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            report(&shell, &e);
            if signal::interrupted() {
                ExitCode::from(INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The exit status after SIGINT/SIGTERM (128 + SIGINT, as shells report Ctrl-C).
const INTERRUPTED: u8 = 130;

/// The first SIGINT or SIGTERM asks the running operation to roll back (it stops at its next
/// step); with no operation open, or at a second signal, velo quits at once and the next velo
/// command finishes what the journal records.
async fn watch_signals(shell: Shell) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if signal::in_flight() == 0 || signal::interrupted() {
            if signal::in_flight() > 0 {
                shell.warn("quitting now: the next velo command finishes the undo");
            }
            std::process::exit(i32::from(INTERRUPTED));
        }
        signal::interrupt();
        shell.warn(
            "interrupted: undoing what this command did (a second Ctrl-C quits at once; the next velo command then finishes the undo)",
        );
    }
}

/// Prints `error: …` and then each cause as `caused by: …`.
fn report(shell: &Shell, err: &anyhow::Error) {
    shell.note(&format!("error: {err}"));
    for cause in err.chain().skip(1) {
        shell.note(&format!("caused by: {cause}"));
    }
}
