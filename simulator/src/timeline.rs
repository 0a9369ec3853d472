//! Every instruction a run issued, with its cycle: the raw material of the
//! profile (`crate::analysis`), the Perfetto trace (`crate::trace`) and the
//! HTML report (`crate::report`). A [`Machine`](crate::Machine) records one
//! when asked ([`Machine::set_record`](crate::Machine::set_record)); the
//! static walk (`crate::schedule`) derives the same list from the
//! instruction lists alone.

use crate::profile::Profile;

/// One issued instruction (a `repeat`'s repetitions are one each, with the
/// index of the repeated instruction; the `repeat` itself is one too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Issue {
    /// Issue cycle (superlane 0).
    pub cycle: u64,
    /// Dense queue number.
    pub queue: u16,
    /// Index of the instruction in its queue.
    pub index: u32,
}

/// One run's issues in issue order (cycle, then queue order) and its
/// counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// Every issue, in the order the engine issued them.
    pub issues: Vec<Issue>,
    /// Cycles and busy cycles of the run.
    pub profile: Profile,
}
