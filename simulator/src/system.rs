//! Many chips: a [`System`] of `N` chips of one target joined by their
//! chip-to-chip links ([`q35_target::SystemTopology`]), run cycle-exactly
//! and deterministically, in parallel on the host's cores.
//!
//! # Why epochs are exact
//!
//! Chips interact only through links, and a vector sent on cycle `s`
//! arrives `c2c.link_latency_cycles = L` later. So the system runs in
//! **epochs** of `L` cycles, `[E, E + L)`: every chip runs its own engine
//! ([`crate::engine`]) through cycle `E + L - 1` with no other chip in
//! sight, then the system moves every vector sent in the epoch to its far
//! end (in chip order, then send order). A vector sent in the epoch
//! arrives on or after `E + L`, the next epoch, and a `recv` on cycle `t`
//! needs only vectors sent by `t - L`, which an earlier epoch delivered:
//! each chip sees exactly what a machine stepping every chip together
//! would. Chips within an epoch share nothing, so they run on any number
//! of threads (`std::thread::scope`, chips split in fixed contiguous
//! groups) with identical cycles, bits and hazards: nothing that depends on
//! a thread reaches an output. An epoch where no chip has an event is
//! skipped (the next one starts at the earliest next event).
//!
//! # Hazards
//!
//! Each chip's engine reports its own first hazard (the link hazards of
//! [`crate::link`] among them). A receive-buffer overrun whose take is
//! still to come is found at the epoch boundary; a vector never received is
//! found at the end. The system stops at the first epoch that ends after a
//! hazard's cycle and reports the first by (cycle, chip, queue,
//! instruction): what a machine stepping every chip together meets first.
//!
//! # Timing only
//!
//! Nothing in a chip waits on a link at run time (a `recv` takes what has
//! arrived or is a hazard), so each chip's issue cycles are its static
//! schedule ([`crate::schedule::walk`]) whatever the other chips do.
//! [`System::timing`] walks every distinct program once (chips with
//! identical programs, as a layer pipeline's mostly are, share the walk)
//! and then checks every link's traffic from the issue cycles alone: the
//! same cycle counts and link figures as a run, with no values.

use std::collections::BTreeMap;
use std::fmt;

use q35_isa::{C2C_LINKS, Instruction, QueueId, QueueKind};
use q35_lpubin::LpuBinary;
use q35_target::{LinkEnd, SystemError, SystemTopology};

use crate::config::MachineConfig;
use crate::engine::{Engine, Stop};
use crate::hazard::{Hazard, HazardKind};
use crate::link::{Arrival, Origin};
use crate::load::{self, LoadError, Loaded};
use crate::profile::Profile;
use crate::schedule::{self, StaticError};
use crate::state::{Plane, Ports, State};

/// A hazard of one chip of a system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemHazard {
    /// The chip.
    pub chip: u32,
    /// The hazard (its queue and instruction are the chip's).
    pub hazard: Hazard,
}

impl SystemHazard {
    /// The order simultaneous hazards are reported in.
    pub fn key(&self) -> (u64, u32, u16, u32) {
        (
            self.hazard.cycle,
            self.chip,
            self.hazard.queue.index(),
            self.hazard.index,
        )
    }
}

impl fmt::Display for SystemHazard {
    /// `chip N: cycle C: queue Q, instruction #I ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chip {}: {}", self.chip, self.hazard)
    }
}

/// Why a system run stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemStop {
    /// A chip broke a rule of the machine.
    Hazard(Box<SystemHazard>),
    /// A chip's next event lies past the cycle limit.
    MaxCycles {
        /// The chip.
        chip: u32,
        /// The limit.
        limit: u64,
        /// The cycle of its next event.
        next: u64,
    },
    /// The static walk of a chip's program met a rule break (timing-only
    /// runs; a full run reports the hazard).
    Static {
        /// The chip.
        chip: u32,
        /// What the walk met.
        error: StaticError,
    },
}

impl fmt::Display for SystemStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SystemStop::Hazard(h) => write!(f, "{h}"),
            SystemStop::MaxCycles { chip, limit, next } => write!(
                f,
                "chip {chip}: the next event is on cycle {next}, past the limit of {limit} cycles"
            ),
            SystemStop::Static { chip, error } => write!(f, "chip {chip}: {error}"),
        }
    }
}

/// A system that cannot be built from its programs.
#[derive(Debug, thiserror::Error)]
pub enum SystemBuildError {
    /// The topology refuses the chip count.
    #[error("{0}")]
    Topology(#[from] SystemError),
    /// A chip's program does not load.
    #[error("chip {chip}: {source}")]
    Load {
        /// The chip.
        chip: u32,
        /// Why.
        source: LoadError,
    },
}

/// What one link of one chip carried in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkUse {
    /// The link.
    pub link: u16,
    /// The chip and link at its far end.
    pub to: LinkEnd,
    /// Vectors sent (`send` and `fwd`).
    pub sent: u64,
    /// Vectors taken at this end (`recv` and `fwd` from it).
    pub received: u64,
    /// Cycles the outbound direction carried vectors (`sent x
    /// c2c_vector_cycles`).
    pub busy_cycles: u64,
    /// Cycles received vectors waited at this end between their arrival
    /// and the instruction that took them, summed.
    pub waited_cycles: u64,
}

impl LinkUse {
    /// Link `link` to `to`, with nothing counted yet.
    fn idle(link: u16, to: LinkEnd) -> LinkUse {
        LinkUse {
            link,
            to,
            sent: 0,
            received: 0,
            busy_cycles: 0,
            waited_cycles: 0,
        }
    }
}

/// One chip's part of a system run.
#[derive(Debug, Clone, PartialEq)]
pub struct ChipRun {
    /// Its cycles, busy cycles and instruction counts.
    pub profile: Profile,
    /// Its links that carried anything, by link.
    pub links: Vec<LinkUse>,
    /// Every vector it took from a link, by (cycle taken, queue).
    pub received: Vec<crate::link::Transfer>,
}

/// A finished system run.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemRun {
    /// The system's cycle count: the last chip's.
    pub cycles: u64,
    /// Per chip.
    pub chips: Vec<ChipRun>,
}

impl SystemRun {
    /// The run as JSON: cycles, and per chip its profile and links.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cycles": self.cycles,
            "chips": self.chips.iter().enumerate().map(|(i, c)| serde_json::json!({
                "chip": i,
                "profile": c.profile.to_json(),
                "links": c.links.iter().map(|l| serde_json::json!({
                    "link": l.link,
                    "to_chip": l.to.chip,
                    "to_link": l.to.link,
                    "sent": l.sent,
                    "received": l.received,
                    "busy_cycles": l.busy_cycles,
                    "waited_cycles": l.waited_cycles,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// A loaded chip: its binary, program and persistent state.
#[derive(Debug)]
struct Chip<'b> {
    binary: &'b LpuBinary,
    loaded: Loaded,
    /// `None` only while a run holds it.
    state: Option<State>,
}

/// `N` chips and their links ([module doc](self)).
#[derive(Debug)]
pub struct System<'b> {
    config: MachineConfig,
    topology: SystemTopology,
    chips: Vec<Chip<'b>>,
    threads: usize,
    max_cycles: Option<u64>,
}

impl<'b> System<'b> {
    /// Loads one program per chip (chip `i` runs `programs[i]`) for the
    /// system of `programs.len()` chips of `config`'s target.
    pub fn new(
        programs: &[&'b LpuBinary],
        config: MachineConfig,
    ) -> Result<System<'b>, SystemBuildError> {
        let n = u32::try_from(programs.len()).unwrap_or(u32::MAX);
        let topology = config.target.system(n)?;
        let mut chips = Vec::with_capacity(programs.len());
        for (i, binary) in programs.iter().enumerate() {
            let chip = i as u32;
            let wrap = |source| SystemBuildError::Load { chip, source };
            let loaded = load::load(binary, &config).map_err(wrap)?;
            let mut state = load::initial_state(binary, &loaded, &config).map_err(wrap)?;
            for link in 0..C2C_LINKS {
                let end = LinkEnd {
                    chip,
                    link: u32::from(link),
                };
                state.links.connected[usize::from(link)] = topology.neighbour(end)?.is_some();
            }
            chips.push(Chip {
                binary,
                loaded,
                state: Some(state),
            });
        }
        Ok(System {
            config,
            topology,
            chips,
            threads: 1,
            max_cycles: None,
        })
    }

    /// Host threads to run chips on (at least 1; results do not depend on it).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Stops a run whose next event lies past `limit`.
    pub fn set_max_cycles(&mut self, limit: Option<u64>) {
        self.max_cycles = limit;
    }

    /// The links between the chips.
    pub fn topology(&self) -> &SystemTopology {
        &self.topology
    }

    /// Chips in the system.
    pub fn chips(&self) -> usize {
        self.chips.len()
    }

    /// Chip `chip`'s state (MEM after a run), if it exists.
    pub fn state(&self, chip: usize) -> Option<&State> {
        self.chips.get(chip).and_then(|c| c.state.as_ref())
    }

    /// Chip `chip`'s state, to write (the host's inputs before a run).
    pub fn state_mut(&mut self, chip: usize) -> Option<&mut State> {
        self.chips.get_mut(chip).and_then(|c| c.state.as_mut())
    }

    /// The machine configuration every chip runs with.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Runs every chip once from cycle 0 on its persistent MEM (queues,
    /// streams, MXM planes, port bookings and links start afresh), to the
    /// end or the first hazard ([module doc](self)).
    pub fn run_once(&mut self) -> Result<SystemRun, SystemStop> {
        let (config, topology, max_cycles, threads) =
            (&self.config, &self.topology, self.max_cycles, self.threads);
        let chip_states = &mut self.chips;
        let mut engines: Vec<Engine<'_>> = Vec::with_capacity(chip_states.len());
        for chip in chip_states.iter_mut() {
            let mut state = chip
                .state
                .take()
                .expect("the state is back after every run");
            state.ports = (0..state.mem.len()).map(|_| Ports::default()).collect();
            if let Ok(p) = (0..state.planes.len())
                .map(|_| Plane::new(config.plane))
                .collect::<Result<Vec<_>, _>>()
            {
                state.planes = p;
            }
            state.links.restart();
            engines.push(Engine::new(config, state, chip.loaded.queues.clone()));
        }
        let n = engines.len();
        // Per chip: None = running, Some(Ok) = done, Some(Err) = stopped.
        let mut outcome: Vec<Option<Result<Profile, Stop>>> = vec![None; n];
        let epoch = config.link_latency.max(1);
        let buffer = config.receive_buffer;
        let mut start = 0u64;
        let mut stop: Option<SystemStop> = None;
        loop {
            let end = start + epoch - 1;
            let limit = match max_cycles {
                Some(m) => end.min(m),
                None => end,
            };
            // Run every running chip through `limit`, in parallel.
            let results = run_epoch(&mut engines, &outcome, limit, threads);
            let mut next_event: Option<u64> = None;
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    None => {}
                    Some(Err(Stop::MaxCycles { next, .. })) => {
                        if max_cycles.is_some_and(|m| next > m) {
                            stop.get_or_insert(SystemStop::MaxCycles {
                                chip: i as u32,
                                limit: max_cycles.unwrap_or(0),
                                next,
                            });
                        }
                        next_event = Some(next_event.map_or(next, |e| e.min(next)));
                    }
                    Some(done) => outcome[i] = Some(done),
                }
            }
            // Deliver the epoch's link traffic, chip by chip in send order.
            for i in 0..n {
                let sent = std::mem::take(&mut engines[i].state_mut().links.outbox);
                for s in sent {
                    let from = LinkEnd {
                        chip: i as u32,
                        link: u32::from(s.link),
                    };
                    // A send on an unconnected link was a hazard, not an outbox entry.
                    let Ok(Some(far)) = topology.neighbour(from) else {
                        continue;
                    };
                    let origin = Origin {
                        chip: i as u32,
                        ..s.origin
                    };
                    engines[far.chip as usize].state_mut().links.inbound[far.link as usize]
                        .deliver(Arrival {
                            arrival: s.arrival,
                            data: s.data,
                            origin,
                        });
                }
            }
            // The first hazard so far: chips' own, and overruns still
            // waiting for their take.
            let mut first: Option<SystemHazard> = None;
            let mut consider = |h: SystemHazard| {
                if first.as_ref().is_none_or(|f| h.key() < f.key()) {
                    first = Some(h);
                }
            };
            for (i, o) in outcome.iter().enumerate() {
                if let Some(Err(Stop::Hazard(h))) = o {
                    consider(match &h.kind {
                        // An arrival at the link's end, whichever
                        // instruction found it (as at an epoch boundary).
                        HazardKind::LinkBufferOverrun { link, .. } => {
                            link_hazard(i as u32, *link, h.cycle, h.kind.clone())
                        }
                        _ => SystemHazard {
                            chip: i as u32,
                            hazard: (**h).clone(),
                        },
                    });
                }
            }
            for (i, e) in engines.iter_mut().enumerate() {
                for (l, inbound) in e.state_mut().links.inbound.iter().enumerate() {
                    if let Some((arrival, from)) = inbound.overrun_before(limit + 1, buffer) {
                        consider(link_hazard(
                            i as u32,
                            l as u16,
                            arrival,
                            HazardKind::LinkBufferOverrun {
                                link: l as u16,
                                held: buffer,
                                from: from.to_string(),
                            },
                        ));
                    }
                }
            }
            let all_done = outcome.iter().all(Option::is_some);
            if let Some(mut h) = first
                && (h.hazard.cycle <= limit || all_done)
            {
                // The next vector on the link, if it was sent by now.
                if let HazardKind::LinkReceiveBeforeArrival { link, next } = &mut h.hazard.kind
                    && next.is_none()
                {
                    *next = engines[h.chip as usize].state_mut().links.inbound[usize::from(*link)]
                        .next_arrival();
                }
                put_back(chip_states, engines);
                return Err(SystemStop::Hazard(Box::new(with_source(chip_states, h))));
            }
            if let Some(s) = stop {
                put_back(chip_states, engines);
                return Err(s);
            }
            if all_done {
                break;
            }
            // Skip epochs in which no chip has anything to do.
            start = (end + 1).max(next_event.unwrap_or(end + 1));
        }
        // Vectors nobody took.
        let mut first: Option<SystemHazard> = None;
        for (i, e) in engines.iter_mut().enumerate() {
            for (l, inbound) in e.state_mut().links.inbound.iter().enumerate() {
                if let Some(a) = inbound.left().next() {
                    let h = link_hazard(
                        i as u32,
                        l as u16,
                        a.arrival,
                        HazardKind::LinkNeverReceived {
                            link: l as u16,
                            from: a.origin.to_string(),
                        },
                    );
                    if first.as_ref().is_none_or(|f| h.key() < f.key()) {
                        first = Some(h);
                    }
                }
            }
        }
        if let Some(h) = first {
            put_back(chip_states, engines);
            return Err(SystemStop::Hazard(Box::new(with_source(chip_states, h))));
        }
        let mut chips = Vec::with_capacity(n);
        for (i, (o, e)) in outcome.into_iter().zip(engines.iter_mut()).enumerate() {
            let profile = match o {
                Some(Ok(p)) => p,
                // Every chip finished without a hazard to get here.
                _ => Profile::new(usize::from(q35_isa::QUEUE_COUNT)),
            };
            let links = &e.state_mut().links;
            let uses = (0..C2C_LINKS)
                .filter_map(|l| {
                    let li = usize::from(l);
                    let (sent, received) = links.traffic[li];
                    if sent == 0 && received == 0 {
                        return None;
                    }
                    let to = self
                        .topology
                        .neighbour(LinkEnd {
                            chip: i as u32,
                            link: u32::from(l),
                        })
                        .ok()
                        .flatten()?;
                    Some(LinkUse {
                        link: l,
                        to,
                        sent,
                        received,
                        busy_cycles: sent * config.link_vector_cycles,
                        waited_cycles: links.waited[li],
                    })
                })
                .collect();
            let mut received = links.taken.clone();
            received.sort_by_key(|t| (t.taken, t.queue.index()));
            chips.push(ChipRun {
                profile,
                links: uses,
                received,
            });
        }
        put_back(chip_states, engines);
        let cycles = chips
            .iter()
            .map(|c| c.profile.total_cycles())
            .max()
            .unwrap_or(0);
        Ok(SystemRun { cycles, chips })
    }

    /// The system's timing without values ([module doc](self)): per chip
    /// its static schedule, every link checked from issue cycles alone.
    /// Identical programs are walked once.
    pub fn timing(&self) -> Result<SystemRun, SystemStop> {
        timing(
            &self.config,
            &self.topology,
            &self.chips.iter().map(|c| &c.loaded).collect::<Vec<_>>(),
        )
        .map_err(|stop| match stop {
            SystemStop::Hazard(h) => SystemStop::Hazard(Box::new(with_source(&self.chips, *h))),
            other => other,
        })
    }
}

/// The timing of the system running `programs` (chip `i` runs
/// `programs[i]`) without building any chip's state: no MEM image is
/// copied, and chips whose binaries hold the same instruction words are
/// decoded and walked once (a 576-chip layer pipeline is a handful of
/// distinct programs). The same result as [`System::timing`].
pub fn timing_of(
    programs: &[&LpuBinary],
    config: &MachineConfig,
) -> Result<Result<SystemRun, SystemStop>, SystemBuildError> {
    let n = u32::try_from(programs.len()).unwrap_or(u32::MAX);
    let topology = config.target.system(n)?;
    // Representatives: (binary, its decoded program).
    let mut distinct: Vec<(&LpuBinary, Loaded)> = Vec::new();
    let mut of_chip: Vec<usize> = Vec::with_capacity(programs.len());
    for (i, &binary) in programs.iter().enumerate() {
        let same = distinct.iter().position(|(d, _)| same_program(d, binary));
        let k = match same {
            Some(k) => k,
            None => {
                let loaded =
                    load::load(binary, config).map_err(|source| SystemBuildError::Load {
                        chip: i as u32,
                        source,
                    })?;
                distinct.push((binary, loaded));
                distinct.len() - 1
            }
        };
        of_chip.push(k);
    }
    let chips: Vec<&Loaded> = of_chip.iter().map(|&k| &distinct[k].1).collect();
    Ok(
        timing(config, &topology, &chips).map_err(|stop| match stop {
            SystemStop::Hazard(h) => {
                let binary = programs.get(h.chip as usize).copied();
                SystemStop::Hazard(Box::new(sourced(binary, *h)))
            }
            other => other,
        }),
    )
}

/// Whether two binaries hold the same instruction words and tables (what a
/// static schedule depends on), for the same target.
fn same_program(a: &LpuBinary, b: &LpuBinary) -> bool {
    a.target_hash() == b.target_hash()
        && a.queues().len() == b.queues().len()
        && a.queues()
            .zip(b.queues())
            .all(|(x, y)| x.id() == y.id() && x.words().as_bytes() == y.words().as_bytes())
        && a.tables().eq(b.tables())
}

/// The hazard with its source op from the chip's debug map, when it has one.
fn with_source(chips: &[Chip<'_>], h: SystemHazard) -> SystemHazard {
    let binary = chips.get(h.chip as usize).map(|c| c.binary);
    sourced(binary, h)
}

fn sourced(binary: Option<&LpuBinary>, mut h: SystemHazard) -> SystemHazard {
    if let Some(b) = binary {
        h.hazard.source = b
            .debug()
            .and_then(|d| d.lookup(h.hazard.queue.index(), h.hazard.index))
            .map(str::to_string);
    }
    h
}

/// Gives every chip its state back after a run.
fn put_back(chips: &mut [Chip<'_>], engines: Vec<Engine<'_>>) {
    for (chip, e) in chips.iter_mut().zip(engines) {
        chip.state = Some(e.into_state());
    }
}

/// Runs each running engine through `limit`, on up to `threads` threads,
/// in fixed contiguous groups of chips. `None` for chips not running.
fn run_epoch(
    engines: &mut [Engine<'_>],
    outcome: &[Option<Result<Profile, Stop>>],
    limit: u64,
    threads: usize,
) -> Vec<Option<Result<Profile, Stop>>> {
    let n = engines.len();
    let mut results: Vec<Option<Result<Profile, Stop>>> = vec![None; n];
    let step = |e: &mut Engine<'_>, done: bool| -> Option<Result<Profile, Stop>> {
        if done {
            return None;
        }
        Some(e.run(Some(limit)).cloned())
    };
    let groups = threads.min(n).max(1);
    if groups == 1 {
        for (i, e) in engines.iter_mut().enumerate() {
            results[i] = step(e, outcome[i].is_some());
        }
        return results;
    }
    let size = n.div_ceil(groups);
    std::thread::scope(|scope| {
        for ((es, rs), os) in engines
            .chunks_mut(size)
            .zip(results.chunks_mut(size))
            .zip(outcome.chunks(size))
        {
            scope.spawn(move || {
                for ((e, r), o) in es.iter_mut().zip(rs.iter_mut()).zip(os) {
                    *r = step(e, o.is_some());
                }
            });
        }
    });
    results
}

/// A link hazard at chip `chip`'s end of link `link`.
fn link_hazard(chip: u32, link: u16, cycle: u64, kind: HazardKind) -> SystemHazard {
    let queue = QueueId::new(QueueKind::C2c(link)).expect("a link queue");
    SystemHazard {
        chip,
        hazard: Hazard {
            cycle,
            queue,
            index: 0,
            text: "(link end)".into(),
            detail: None,
            kind,
            source: None,
        },
    }
}

/// A C2C issue seen in a static schedule.
#[derive(Debug, Clone, Copy)]
struct LinkIssue {
    cycle: u64,
    queue: QueueId,
    index: u32,
}

fn timing(
    config: &MachineConfig,
    topology: &SystemTopology,
    chips: &[&Loaded],
) -> Result<SystemRun, SystemStop> {
    // Distinct programs, walked once each.
    let mut distinct: Vec<(&Loaded, Vec<u32>)> = Vec::new();
    for (i, l) in chips.iter().enumerate() {
        match distinct
            .iter_mut()
            .find(|(d, _)| std::ptr::eq(*d, *l) || d.queues == l.queues)
        {
            Some((_, users)) => users.push(i as u32),
            None => distinct.push((l, vec![i as u32])),
        }
    }
    let mut walks: Vec<Option<crate::timeline::Timeline>> = vec![None; chips.len()];
    for (loaded, users) in &distinct {
        match schedule::walk(loaded, config) {
            Ok(mut t) => {
                // Only the links' issues are read past here: the rest of a
                // walk (every instruction's) would hold gigabytes for a
                // system of hundreds of large programs.
                t.issues.retain(|i| {
                    QueueId::from_index(i.queue)
                        .is_some_and(|q| matches!(q.kind(), QueueKind::C2c(_)))
                });
                t.issues.shrink_to_fit();
                for &u in users {
                    walks[u as usize] = Some(t.clone());
                }
            }
            Err(error) => {
                return Err(SystemStop::Static {
                    chip: users[0],
                    error,
                });
            }
        }
    }
    let walks: Vec<crate::timeline::Timeline> = walks.into_iter().flatten().collect();
    let links = usize::from(C2C_LINKS);
    // Per (chip, link): sends out of it, takes from it.
    let mut sends: Vec<Vec<Vec<LinkIssue>>> = vec![vec![Vec::new(); links]; chips.len()];
    let mut takes: Vec<Vec<Vec<LinkIssue>>> = vec![vec![Vec::new(); links]; chips.len()];
    for (c, t) in walks.iter().enumerate() {
        for issue in &t.issues {
            let Some(queue) = QueueId::from_index(issue.queue) else {
                continue;
            };
            let QueueKind::C2c(link) = queue.kind() else {
                continue;
            };
            let Some(ins) = chips[c].queues[usize::from(issue.queue)]
                .as_ref()
                .and_then(|q| q.get(issue.index as usize))
            else {
                continue;
            };
            let li = LinkIssue {
                cycle: issue.cycle,
                queue,
                index: issue.index,
            };
            match ins {
                Instruction::Send { .. } => sends[c][usize::from(link)].push(li),
                Instruction::Recv { .. } => takes[c][usize::from(link)].push(li),
                Instruction::Fwd { link: from } => {
                    takes[c][*from as usize].push(li);
                    sends[c][usize::from(link)].push(li);
                }
                _ => {}
            }
        }
    }
    let mut first: Option<SystemHazard> = None;
    let mut consider = |h: SystemHazard| {
        if first.as_ref().is_none_or(|f| h.key() < f.key()) {
            first = Some(h);
        }
    };
    let hazard = |chip: u32, li: &LinkIssue, text: String, kind: HazardKind| SystemHazard {
        chip,
        hazard: Hazard {
            cycle: li.cycle,
            queue: li.queue,
            index: li.index,
            text,
            detail: None,
            kind,
            source: None,
        },
    };
    let text = |c: usize, li: &LinkIssue| {
        chips[c].queues[usize::from(li.queue.index())]
            .as_ref()
            .and_then(|q| q.get(li.index as usize))
            .map_or_else(String::new, ToString::to_string)
    };
    // Arrivals per (chip, link), from the far ends' sends.
    let mut arrivals: Vec<Vec<Vec<(u64, Origin)>>> = vec![vec![Vec::new(); links]; chips.len()];
    let mut uses: Vec<BTreeMap<u16, LinkUse>> = vec![BTreeMap::new(); chips.len()];
    for (c, per_link) in sends.iter().enumerate() {
        for (l, list) in per_link.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let from = LinkEnd {
                chip: c as u32,
                link: l as u32,
            };
            let far = topology.neighbour(from).ok().flatten();
            let mut busy: Option<(u64, u64)> = None;
            for li in list {
                let Some(far) = far else {
                    consider(hazard(
                        c as u32,
                        li,
                        text(c, li),
                        HazardKind::LinkNotConnected { link: l as u16 },
                    ));
                    break;
                };
                if let Some((since, until)) = busy
                    && li.cycle < until
                {
                    consider(hazard(
                        c as u32,
                        li,
                        text(c, li),
                        HazardKind::LinkOverrun {
                            link: l as u16,
                            since,
                            until,
                        },
                    ));
                }
                busy = Some((li.cycle, li.cycle + config.link_vector_cycles));
                arrivals[far.chip as usize][far.link as usize].push((
                    li.cycle + config.link_latency,
                    Origin {
                        chip: c as u32,
                        queue: li.queue,
                        index: li.index,
                        cycle: li.cycle,
                    },
                ));
                let u = uses[c]
                    .entry(l as u16)
                    .or_insert_with(|| LinkUse::idle(l as u16, far));
                u.sent += 1;
                u.busy_cycles += config.link_vector_cycles;
            }
        }
    }
    let buffer = config.receive_buffer as usize;
    let mut received: Vec<Vec<crate::link::Transfer>> = vec![Vec::new(); chips.len()];
    for c in 0..chips.len() {
        for l in 0..links {
            let got = &arrivals[c][l];
            let taken = &takes[c][l];
            for (k, li) in taken.iter().enumerate() {
                match got.get(k) {
                    Some(&(a, _)) if a <= li.cycle => {
                        if let Some(&(late, from)) = got.get(k + buffer)
                            && late <= li.cycle
                        {
                            consider(link_hazard(
                                c as u32,
                                l as u16,
                                late,
                                HazardKind::LinkBufferOverrun {
                                    link: l as u16,
                                    held: config.receive_buffer,
                                    from: from.to_string(),
                                },
                            ));
                        }
                        if let Some(far) = topology
                            .neighbour(LinkEnd {
                                chip: c as u32,
                                link: l as u32,
                            })
                            .ok()
                            .flatten()
                        {
                            let u = uses[c]
                                .entry(l as u16)
                                .or_insert_with(|| LinkUse::idle(l as u16, far));
                            u.received += 1;
                            u.waited_cycles += li.cycle - a;
                            received[c].push(crate::link::Transfer {
                                from: got[k].1,
                                link: l as u16,
                                arrival: a,
                                queue: li.queue,
                                index: li.index,
                                taken: li.cycle,
                            });
                        }
                    }
                    other => {
                        consider(hazard(
                            c as u32,
                            li,
                            text(c, li),
                            HazardKind::LinkReceiveBeforeArrival {
                                link: l as u16,
                                next: other.map(|&(a, _)| a),
                            },
                        ));
                        break;
                    }
                }
            }
            // Never taken: an overrun if the buffer was full, and left over.
            if let Some(&(a, from)) = got.get(taken.len()) {
                if let Some(&(late, lfrom)) = got.get(taken.len() + buffer) {
                    consider(link_hazard(
                        c as u32,
                        l as u16,
                        late,
                        HazardKind::LinkBufferOverrun {
                            link: l as u16,
                            held: config.receive_buffer,
                            from: lfrom.to_string(),
                        },
                    ));
                }
                consider(link_hazard(
                    c as u32,
                    l as u16,
                    a,
                    HazardKind::LinkNeverReceived {
                        link: l as u16,
                        from: from.to_string(),
                    },
                ));
            }
        }
    }
    if let Some(h) = first {
        return Err(SystemStop::Hazard(Box::new(h)));
    }
    let chips: Vec<ChipRun> = walks
        .into_iter()
        .zip(uses)
        .zip(received)
        .map(|((t, u), mut r)| {
            r.sort_by_key(|t| (t.taken, t.queue.index()));
            ChipRun {
                profile: t.profile,
                links: u.into_values().collect(),
                received: r,
            }
        })
        .collect();
    let cycles = chips
        .iter()
        .map(|c| c.profile.total_cycles())
        .max()
        .unwrap_or(0);
    Ok(SystemRun { cycles, chips })
}
