//! Shell completions and man pages, generated from the clap definitions so they never drift
//! from the commands. They need no velo home: `velo completion bash` works anywhere.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use super::Cli;
use crate::ui::Shell;

/// The completion script of `velo` for `kind`.
pub fn completion(kind: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(kind, &mut Cli::command(), "velo", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// velo(1): the commands, global options and version.
pub fn man_page() -> Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .context("rendering the man page")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes velo.1 and a page for every command (`velo-branch-create.1`, …) into `dir`;
/// returns how many.
pub fn write_man_pages(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(count_pages(&Cli::command()))
}

fn count_pages(cmd: &clap::Command) -> usize {
    1 + cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(count_pages)
        .sum::<usize>()
}

pub fn print_completion(shell: &Shell, kind: clap_complete::Shell) -> Result<()> {
    shell.out(completion(kind).trim_end());
    Ok(())
}

pub fn print_man(shell: &Shell, dir: Option<&Path>) -> Result<()> {
    match dir {
        None => shell.out(man_page()?.trim_end()),
        Some(dir) => {
            let n = write_man_pages(dir)?;
            shell.note(&format!("Wrote {n} man pages into {}.", dir.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_command() {
        for kind in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = completion(kind);
            for word in ["branch", "snapshot", "completion", "pitr", "quiet"] {
                assert!(script.contains(word), "{kind}: {word}");
            }
        }
    }

    #[test]
    fn man_pages_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_man_pages(dir.path()).unwrap();
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, n);
        assert!(dir.path().join("velo-branch-create.1").exists());
        assert!(man_page().unwrap().contains(".TH velo 1"));
    }
}
