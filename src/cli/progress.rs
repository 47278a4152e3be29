//! Progress for long work: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use thinlayer::progress::Progress;

/// Progress of work layer by layer (`importing`, `saving`).
pub struct ImportProgress {
    bar: Option<ProgressBar>,
    verb: &'static str,
}

impl ImportProgress {
    pub fn new() -> ImportProgress {
        Self::doing("importing")
    }

    pub fn doing(verb: &'static str) -> ImportProgress {
        ImportProgress {
            bar: std::io::stderr().is_terminal().then(ProgressBar::hidden),
            verb,
        }
    }
}

impl Progress for ImportProgress {
    fn layer_start(&self, index: usize, count: usize, size: Option<u64>) {
        match &self.bar {
            Some(bar) => {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.reset();
                bar.set_length(size.unwrap_or(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(format!("layer {}/{count}", index + 1));
            }
            None => eprintln!("{} layer {}/{count}", self.verb, index + 1),
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn layer_done(&self, index: usize, reused: bool) {
        if reused {
            match &self.bar {
                Some(bar) => bar.println(format!("layer {}: already present, reused", index + 1)),
                None => eprintln!("layer {}: already present, reused", index + 1),
            }
        }
    }
}

impl Drop for ImportProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
