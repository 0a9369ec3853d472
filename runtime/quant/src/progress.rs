//! Progress of long work (calibration, quantizing every matrix), reported
//! to a caller's callback so that a binary can draw a progress bar; library
//! crates never print.

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A stage starts (`calibrating`, `quantizing`).
    Stage(&'a str),
    /// `done` of `total` items of the current stage are finished; `item`
    /// names the last one (`blk.3.ffn_up.weight`).
    Item {
        /// Items finished.
        done: usize,
        /// Items in the stage.
        total: usize,
        /// The last item finished.
        item: &'a str,
    },
}

/// A callback that ignores every report.
pub fn silent(_: Progress<'_>) {}
