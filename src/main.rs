//! The `thinlayer` command: parses arguments, calls the library, prints.

mod cli;

use std::process::ExitCode;

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
    match cli::run(args) {
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
