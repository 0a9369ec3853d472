//! A progress bar on stderr for long work: a spinner with the stage and
//! the time so far, and a bar once the stage reports items (matrices
//! quantized). It draws only when stderr is a terminal (indicatif's stderr
//! target hides itself otherwise), so redirected output and test
//! transcripts carry no progress noise. Library crates report through a
//! callback ([`q35_quant::Progress`]); the binaries (`q35c`, `q35sim`)
//! create the bar from here, and nothing in a library draws one.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use q35_quant::Progress;

/// A stage spinner that becomes a bar when items are reported.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    counting: std::cell::Cell<bool>,
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}{msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}[{bar:30}] {pos}/{len} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Bar {
    /// A spinner on stderr showing `prefix` (e.g. `compile model.toml: `)
    /// and `stage`; hidden unless stderr is a terminal, and when `show` is
    /// false (something else writes to stderr meanwhile).
    pub fn new(prefix: impl Into<String>, stage: impl Into<String>, show: bool) -> Bar {
        let target = if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(spinner_style());
        bar.set_prefix(prefix.into());
        bar.set_message(stage.into());
        if !bar.is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Bar {
            bar,
            counting: std::cell::Cell::new(false),
        }
    }

    /// A new stage (a spinner again).
    pub fn stage(&self, stage: impl Into<String>) {
        if self.counting.replace(false) {
            self.bar.set_style(spinner_style());
            self.bar.unset_length();
        }
        self.bar.set_message(stage.into());
    }

    /// `done` of `total` items, the last one `item`.
    pub fn items(&self, done: usize, total: usize, item: &str) {
        if !self.counting.replace(true) {
            self.bar.set_style(bar_style());
        }
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        self.bar.set_message(item.to_string());
    }

    /// Prints `line` on stderr above the bar (which is drawn again below
    /// it), or plainly when the bar is hidden.
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }

    /// A report from a library's long work.
    pub fn report(&self, p: Progress<'_>) {
        match p {
            Progress::Stage(s) => self.stage(s),
            Progress::Item { done, total, item } => self.items(done, total, item),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
