//! The `velo` binary: parse, run, print the error chain, exit. The only exit point.

use std::process::ExitCode;

use clap::Parser;

use velo::cli::{ChildExit, Cli, Command};
use velo::ops::{Ctx, UsageError, recover, signal};
use velo::state::Store;
use velo::ui::Shell;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Parsed: the arguments' memory can now lose the passwords other users would see in it.
    velo::cli::hide_passwords();
    // SAFETY: no thread has started yet (the async runtime is built below).
    unsafe { velo::source::password::take_env_password() };
    let shell = Shell::new(cli.quiet);
    if let Some(result) = cli.run_offline(&shell) {
        return exit(&shell, result);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = anyhow::Error::new(e).context("starting the async runtime");
            return exit(&shell, Err(e));
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
    exit(&shell, result)
}

/// The exit status of a usage error: a bad argument or option (clap uses it too).
const USAGE: u8 = 2;

/// Reports an error and picks the exit status: a child's own status (psql), 2 for a usage
/// error, 130 after an interrupt, 1 for any other failure.
fn exit(shell: &Shell, result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if let Some(child) = e.downcast_ref::<ChildExit>() {
        return ExitCode::from(u8::try_from(child.0).unwrap_or(1));
    }
    report(shell, &e);
    if e.chain().any(|c| c.is::<UsageError>()) {
        ExitCode::from(USAGE)
    } else if signal::interrupted() {
        ExitCode::from(INTERRUPTED)
    } else {
        ExitCode::FAILURE
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
    shell.error(&format!("error: {err}"));
    for cause in err.chain().skip(1) {
        shell.error(&format!("caused by: {cause}"));
    }
}
