//! The audit's progress bar: bytes (or files) done, throughput and ETA, drawn on stderr only
//! when stderr is a terminal. indicatif does the drawing and rate estimation; every phase of
//! the audit shares one [`Progress`], which is cheap to clone and safe to use from the
//! hashing threads.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a bytes phase shows: done, total, throughput, time left.
const BYTES_TEMPLATE: &str =
    "{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";
/// What a files phase shows.
const FILES_TEMPLATE: &str = "{prefix:>14} [{bar:30}] {pos}/{len} files {per_sec} ETA {eta}";

/// A progress bar that may be hidden. All methods are no-ops when hidden.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
}

/// What a phase counts.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Files,
}

impl Progress {
    /// A bar on stderr if it is a terminal, hidden otherwise.
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::visible()
        } else {
            Progress::hidden()
        }
    }

    /// A bar drawn on stderr.
    pub fn visible() -> Progress {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    /// A bar that draws nothing.
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    /// Starts a phase named `name` with `total` units to do (0 if unknown).
    pub fn phase(&self, name: &str, total: u64, unit: Unit) {
        let template = match unit {
            Unit::Bytes => BYTES_TEMPLATE,
            Unit::Files => FILES_TEMPLATE,
        };
        // The templates are constants, checked by the tests below.
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_prefix(name.to_string());
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.reset_eta();
    }

    /// Adds `n` units done in the current phase.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Adds `n` to the current phase's total (work discovered while running).
    pub fn inc_total(&self, n: u64) {
        self.bar.inc_length(n);
    }

    /// Prints a line above the bar (or to stderr when hidden is not wanted: nothing).
    pub fn println(&self, line: &str) {
        if !self.bar.is_hidden() {
            self.bar.println(line);
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_valid() {
        for t in [BYTES_TEMPLATE, FILES_TEMPLATE] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
        // A hidden bar takes every call without drawing.
        let p = Progress::hidden();
        p.phase("hashing", 10, Unit::Bytes);
        p.inc(5);
        p.inc_total(5);
        p.finish();
    }
}
