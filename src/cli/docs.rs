//! `thinlayer completions SHELL` and `thinlayer man --dir DIR`: shell
//! completions and man pages made from the same clap definition the
//! command parses with, so they cannot drift from it. Both use the
//! built-in defaults, never a configuration file's.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Command};
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// `thinlayer completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// `thinlayer man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages to (created if missing); e.g.
    /// /usr/local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Prints the completion script for `a.shell` on stdout.
pub fn completions(mut cmd: Command, a: &CompletionsArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "thinlayer", &mut out);
    out.flush().context("writing the completion script")
}

/// Writes the man pages into `a.dir` and names them on stdout.
pub fn man(cmd: Command, a: &ManArgs) -> Result<()> {
    for p in write_man_pages(cmd, &a.dir)? {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes one page per command and subcommand, hidden ones excepted, named
/// as git's are: `thinlayer.1`, `thinlayer-container.1`,
/// `thinlayer-container-create.1`. Each subcommand's page refers to its
/// parent's under SEE ALSO. Returns the files written.
pub fn write_man_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built, every subcommand knows its full name (display name
    // `thinlayer-container-create`, bin name `thinlayer container create`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, None, dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &Command,
    parent: Option<&str>,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let name = page_name(cmd);
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .source(format!("thinlayer {}", env!("CARGO_PKG_VERSION")))
        .manual("thinlayer manual");
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut extra = Roff::new();
    match parent {
        Some(parent) => {
            extra
                .control("SH", ["SEE ALSO"])
                .text([bold(parent), roman("(1)")]);
        }
        None => {
            extra
                .control("SH", ["FILES"])
                .control("TP", [])
                .text([bold(thinlayer::config::DEFAULT_PATH)]);
            extra.text([roman(
                "Defaults for the flags, set once for a node (see --config). \
                 A flag or environment variable given wins over the file.",
            )]);
        }
    }
    extra.to_writer(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, Some(&name), dir, written)?;
    }
    Ok(())
}

fn page_name(cmd: &Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    /// Every page the command tree asks for, found by walking it afresh
    /// (so a new subcommand is expected without touching this test), with
    /// its parent's page.
    fn expected(
        cmd: &Command,
        prefix: &str,
        parent: Option<String>,
        out: &mut Vec<(String, Option<String>)>,
    ) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        out.push((name.clone(), parent));
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            expected(sub, &name, Some(name.clone()), out);
        }
    }

    #[test]
    fn plain_man_pages_one_per_command_and_subcommand() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("man1");
        let written = write_man_pages(Cli::command(), &dir).unwrap();
        let mut want = Vec::new();
        expected(&Cli::command(), "", None, &mut want);
        assert!(want.len() > 40, "the walk found only {want:?}");
        for must in [
            "thinlayer",
            "thinlayer-container-create",
            "thinlayer-volume-create",
            "thinlayer-pool-create",
        ] {
            assert!(
                want.iter().any(|(n, _)| n == must),
                "{must} not in {want:?}"
            );
        }
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let mut want_files: Vec<String> = want.iter().map(|(n, _)| format!("{n}.1")).collect();
        want_files.sort();
        assert_eq!(files, want_files);
        assert_eq!(written.len(), want.len());
        for (name, parent) in &want {
            let page = std::fs::read_to_string(dir.join(format!("{name}.1"))).unwrap();
            assert!(
                page.lines()
                    .any(|l| l.starts_with(&format!(".TH {} 1 ", name.to_uppercase()))),
                "{name}: {page}"
            );
            assert!(page.contains(".SH NAME"), "{name}");
            match parent {
                Some(p) => assert!(
                    page.contains(".SH \"SEE ALSO\"")
                        && page.contains(&format!("\\fB{}\\fR(1)", p.replace('-', "\\-"))),
                    "{name}: no SEE ALSO of {p}:\n{page}"
                ),
                None => assert!(page.contains(thinlayer::config::DEFAULT_PATH), "{page}"),
            }
        }
        // Writing again gives the same bytes (no date or path in a page).
        let again = t.path().join("again");
        write_man_pages(Cli::command(), &again).unwrap();
        for f in &files {
            assert_eq!(
                std::fs::read(dir.join(f)).unwrap(),
                std::fs::read(again.join(f)).unwrap(),
                "{f}"
            );
        }
    }
}
