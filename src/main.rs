//! The `thinlayer` command: parses arguments, calls the library, prints.

mod cli;

use std::process::ExitCode;

use thinlayer::phase::timing::{self, PhaseLine};

fn main() -> ExitCode {
    // A listing piped into `head` must end quietly when the reader goes,
    // as other Unix tools do, not panic on a failed write: take SIGPIPE's
    // default action (Rust's runtime sets it to ignore).
    // SAFETY: SIG_DFL installs no handler, so no code of ours runs in
    // signal context; this runs first, before any other thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let args = match cli::config::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("thinlayer: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.phases_file() {
        None => cli::run(args),
        Some(file) => {
            let timed = timing::timed(|| cli::run(args));
            let line = PhaseLine::new(std::env::args().skip(1).collect(), &timed);
            if let Err(e) = line.append(&file) {
                eprintln!(
                    "thinlayer: warning: could not append the phases to {}: {e}",
                    file.display()
                );
            }
            timed.value
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "thinlayer: {}{}",
                cli::hint::one_line(&e),
                cli::hint::hint(&e)
            );
            ExitCode::FAILURE
        }
    }
}
