//! Loading a program from an `.lpubin` (docs/isa.md 5): check the target
//! hash, decode every queue's words with `q35-isa`, check that every
//! instruction may stand where it stands, and build the initial state
//! (MEM image, tables, MXM planes).
//!
//! The binary stays memory-mapped; decoding builds one `Vec<Instruction>`
//! per queue, and the MEM image is copied into the simulator's slices.

use q35_isa::{Instruction, QueueId, Table, VECTOR_BYTES};
use q35_lpubin::{LpuBinError, LpuBinary};

use crate::config::MachineConfig;
use crate::state::{MemSlice, Plane, Ports, State};

/// Why a binary cannot run on this machine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Built for another target (both hashes in the message).
    #[error(transparent)]
    Binary(#[from] LpuBinError),
    /// A queue id that names no queue.
    #[error("queues: queue id {id} names no queue (0..{})", q35_isa::QUEUE_COUNT)]
    UnknownQueue {
        /// The id.
        id: u16,
    },
    /// A word that is not an instruction.
    #[error("queue {queue}, instruction #{index}: {source}")]
    Decode {
        /// The queue.
        queue: QueueId,
        /// Index of the word.
        index: usize,
        /// Why.
        source: q35_isa::DecodeError,
    },
    /// An instruction that may not stand where it stands.
    #[error("queue {queue}, instruction #{index} `{text}`: {message}")]
    Placement {
        /// The queue.
        queue: QueueId,
        /// Its index.
        index: usize,
        /// Its assembly text.
        text: String,
        /// What is wrong.
        message: String,
    },
    /// The MEM image does not fit the machine.
    #[error("mem: {0}")]
    Mem(String),
    /// A table that is not a list of lane indices.
    #[error("tables: `{name}`: {message}")]
    Table {
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The target is one the simulator cannot run.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A further program that cannot run.
    #[error("program `{name}`: {source}")]
    Program {
        /// Its name.
        name: String,
        /// Why.
        source: Box<LoadError>,
    },
    /// The MXM plane parameters are out of the plane model's range.
    #[error("MXM plane: {0}")]
    Plane(#[from] crate::mxm::MxmError),
}

/// A decoded program, ready to run.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Instruction lists by dense queue number (`None`: unused queue).
    pub queues: Vec<Option<Vec<Instruction>>>,
    /// Tables by id (the binary's tables in name order).
    pub tables: Vec<Table>,
}

impl Loaded {
    /// The program's `permute` tables, each with its lane map, as the
    /// machine's state holds them ([`crate::state::State::tables`]).
    pub fn permute_tables(&self) -> Vec<crate::exec::PermuteTable> {
        self.tables
            .iter()
            .map(|t| crate::exec::PermuteTable::new(t.values.clone()))
            .collect()
    }
}

/// Checks the target hash and decodes and validates every queue.
pub fn load(binary: &LpuBinary, config: &MachineConfig) -> Result<Loaded, LoadError> {
    config.validate()?;
    binary.check_target(&config.target_hash)?;
    let loaded = decode(binary.queues(), binary.tables(), config)?;
    // Decoded: the words' pages need not stay resident.
    binary.release_section(q35_lpubin::SectionKind::Queues);
    Ok(loaded)
}

/// [`load`] for a further program of `binary` (docs/lpubin.md 3.9): its
/// queues and tables.
pub fn load_program(
    binary: &LpuBinary,
    program: &q35_lpubin::ProgramView<'_>,
    config: &MachineConfig,
) -> Result<Loaded, LoadError> {
    config.validate()?;
    binary.check_target(&config.target_hash)?;
    let loaded =
        decode(program.queues(), program.tables(), config).map_err(|e| LoadError::Program {
            name: program.name().to_string(),
            source: Box::new(e),
        })?;
    binary.release_section(q35_lpubin::SectionKind::Programs);
    Ok(loaded)
}

fn decode<'a>(
    queue_list: impl Iterator<Item = q35_lpubin::Queue<'a>>,
    table_list: impl Iterator<Item = (&'a str, &'a [u8])>,
    config: &MachineConfig,
) -> Result<Loaded, LoadError> {
    let mut tables = Vec::new();
    for (name, bytes) in table_list {
        let err = |message: String| LoadError::Table {
            name: name.to_string(),
            message,
        };
        if bytes.len() % 2 != 0 {
            return Err(err(format!(
                "{} bytes: a table holds u16 values",
                bytes.len()
            )));
        }
        let values: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        tables.push(Table {
            name: name.to_string(),
            values,
        });
    }
    let list: Vec<q35_lpubin::Queue<'a>> = queue_list.collect();
    // Queues decode independently: on as many threads as the host has
    // (up to 4), each taking the next undecoded queue; the first error in
    // the binary's queue order is the one reported, whatever the threads.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4)
        .min(list.len().max(1));
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(q) = list.get(i) else {
                return done;
            };
            done.push((i, decode_queue(q, &tables, config)));
        }
    };
    let mut decoded: Vec<(usize, Decoded)> = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in others {
            // A decode panic is a bug: resume it on this thread.
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    decoded.sort_unstable_by_key(|(i, _)| *i);
    let mut queues: Vec<Option<Vec<Instruction>>> = vec![None; usize::from(q35_isa::QUEUE_COUNT)];
    for (_, d) in decoded {
        let (queue, list) = d?;
        queues[usize::from(queue.index())] = Some(list);
    }
    Ok(Loaded { queues, tables })
}

/// A queue's instructions, or why they do not load.
type Decoded = Result<(QueueId, Vec<Instruction>), LoadError>;

/// One queue's instructions, decoded and checked.
fn decode_queue(q: &q35_lpubin::Queue<'_>, tables: &[Table], config: &MachineConfig) -> Decoded {
    let queue = QueueId::from_index(q.id()).ok_or(LoadError::UnknownQueue { id: q.id() })?;
    let mut list = Vec::with_capacity(q.len());
    for (index, word) in q.words().iter().enumerate() {
        let ins = Instruction::decode(word).map_err(|source| LoadError::Decode {
            queue,
            index,
            source,
        })?;
        check_placement(queue, list.last(), &ins, tables, config).map_err(|message| {
            LoadError::Placement {
                queue,
                index,
                text: ins.to_string(),
                message,
            }
        })?;
        list.push(ins);
    }
    Ok((queue, list))
}

/// Whether `ins`, as [`Instruction::decode`] returned it (its fields
/// checked), may follow `prev` in `queue`: the assembler's other rules
/// ([`q35_isa::program::check_decoded_placement`]: the queue's unit,
/// `repeat` placement, MXM stream directions, `permute` tables), and the
/// target's (`lw` rows per cycle).
pub fn check_placement(
    queue: QueueId,
    prev: Option<&Instruction>,
    ins: &Instruction,
    tables: &[Table],
    config: &MachineConfig,
) -> Result<(), String> {
    q35_isa::program::check_decoded_placement(queue, prev, ins, tables)?;
    if let Instruction::Lw { k, .. } = ins
        && *k as usize > config.plane.install_rows_per_cycle
    {
        return Err(format!(
            "{k} rows a cycle: the plane installs at most {} (mxm.install_rows_per_cycle)",
            config.plane.install_rows_per_cycle
        ));
    }
    Ok(())
}

/// Bytes of the mapped MEM image copied between two releases of its pages.
pub const RELEASE_STEP: usize = 4 << 20;

/// The initial state: zeroed MEM with the binary's image copied in, the
/// tables, fresh MXM planes.
///
/// The image is copied extent by extent (its data block is the extents'
/// bytes back to back), and the mapped pages already copied are released
/// every [`RELEASE_STEP`] bytes ([`LpuBinary::release`]): the image is
/// resident once, in the slices, never twice.
pub fn initial_state(
    binary: &LpuBinary,
    loaded: &Loaded,
    config: &MachineConfig,
) -> Result<State, LoadError> {
    let slices = usize::from(crate::config::ISA_COUNTS.0);
    let words = config.mem.words_per_slice;
    let mut mem: Vec<MemSlice> = (0..slices).map(|_| MemSlice::new(words)).collect();
    if let Some(image) = binary.mem() {
        if !image.is_empty() && image.word_bytes() != VECTOR_BYTES {
            return Err(LoadError::Mem(format!(
                "words of {} bytes, the machine's are {VECTOR_BYTES}",
                image.word_bytes()
            )));
        }
        // The section: every extent's bytes lie inside it, in file order.
        let data = binary
            .section_bytes(q35_lpubin::SectionKind::Mem)
            .unwrap_or_default();
        let end_in_data = |b: &[u8]| {
            (b.as_ptr().addr())
                .checked_sub(data.as_ptr().addr())
                .map(|at| at + b.len())
                .filter(|&end| end <= data.len())
        };
        let mut released = 0usize;
        for e in image.extents() {
            let r = e.range;
            let Some(slice) = mem.get_mut(usize::from(r.slice)) else {
                return Err(LoadError::Mem(format!(
                    "{r}: slice {} is not one of the {slices} MEM slices",
                    r.slice
                )));
            };
            if r.end_word() > u64::from(words) {
                return Err(LoadError::Mem(format!(
                    "{r}: past the slice's {words} words (mem.words_per_slice)"
                )));
            }
            slice.fill(r.first_word, e.bytes);
            if let Some(end) = end_in_data(e.bytes)
                && end >= released + RELEASE_STEP
            {
                binary.release(&data[released..end]);
                // The page `end` falls in is only partly copied.
                released = end - end % q35_lpubin::PAGE as usize;
            }
        }
        binary.release(data);
    }
    let planes = (0..crate::config::ISA_COUNTS.2)
        .map(|_| Plane::new(config.plane))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(State {
        mem,
        ports: (0..slices).map(|_| Ports::default()).collect(),
        planes,
        tables: loaded.permute_tables(),
        links: crate::link::Links::default(),
    })
}
