//! The target machine description: the one place the compiler, the ISA and
//! the cycle-accurate simulator get the machine's figures from.
//!
//! A [`Target`] is `targets/<name>.toml` deserialized directly, one struct
//! per table (docs/target.md lists every key, its unit, and whether the
//! figure is published for Groq's TSP or ASSUMED by q35). [`Target::parse`]
//! refuses unknown keys and missing fields, then validates: every count is
//! at least 1 and sizes agree with each other (a MEM word is one vector, MEM
//! bytes are slices x words x word bytes, ...). Errors read
//! `file:line:col: \`table.key\`: message`.
//!
//! Everything that follows from the parameters is a method, not a
//! parameter: peak MAC rate, MEM slice size, the east-west position of every
//! functional slice ([`Target::floorplan`]), the instruction queues, the
//! MXM's fill and drain. [`Target::hash`] is a SHA-256 over the parsed
//! parameters (not the text), which a compiled binary records so the
//! simulator can refuse a program built for another machine.
//!
//! `lpu-v1` is built in ([`BUILTIN`]); it is the file `targets/lpu-v1.toml`,
//! embedded at build time.

pub mod diag;
mod error;
mod floorplan;
mod hash;
mod system;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::TargetError;
pub use floorplan::{Hemisphere, InstructionQueues, Slice};
pub use hash::TargetHash;
pub use system::{Hop, LinkEnd, LinkKind, SystemError, SystemTopology};

/// The built-in targets, by name, with the text of their description file.
pub const BUILTIN: &[(&str, &str)] = &[(
    "lpu-v1",
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../targets/lpu-v1.toml"
    )),
)];

/// The names of the built-in targets.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// A target machine: every figure the compiler's passes, the ISA and the
/// simulator's timing model are parameterised by. Cycles are core clock
/// cycles; sizes are bytes unless a key says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Target name (`lpu-v1`).
    pub name: String,
    /// One line for humans; not part of [`Target::hash`].
    #[serde(default)]
    pub description: String,
    /// Core clock in MHz.
    pub clock_mhz: f64,
    /// The vector every functional slice reads and writes per cycle.
    pub vector: Vector,
    /// Stream registers between functional slices.
    pub streams: Streams,
    /// The order of functional slices along the east-west axis.
    pub floorplan: Floorplan,
    /// The systolic matrix unit.
    pub mxm: Mxm,
    /// The vector unit.
    pub vxm: Vxm,
    /// On-chip SRAM.
    pub mem: Mem,
    /// The switch unit (shift, permute, transpose).
    pub sxm: Sxm,
    /// Instruction control.
    pub icu: Icu,
    /// Chip-to-chip links and the system around one chip.
    pub c2c: C2c,
    /// Where the description came from (`<builtin lpu-v1>` or a file); not a
    /// parameter: neither serialized nor hashed.
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[vector]`: the unit of data. One vector is `lanes` bytes, one per lane,
/// grouped into superlanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// Lanes (bytes) in a vector; `superlanes x lanes_per_superlane`.
    pub lanes: u32,
    /// Superlanes, stacked north to south.
    pub superlanes: u32,
    /// Lanes in one superlane.
    pub lanes_per_superlane: u32,
    /// Cycles an instruction takes to flow south one superlane.
    pub superlane_skew_cycles: u32,
}

/// `[streams]`: stream registers carrying vectors east and west.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streams {
    /// Stream registers flowing east (and as many flowing west).
    pub per_direction: u32,
    /// Cycles for a vector to move one slice position.
    pub hop_cycles: u32,
}

/// `[floorplan]`: which functional slices sit where. The two hemispheres
/// mirror each other around the single VXM; see [`Target::floorplan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floorplan {
    /// The units of one hemisphere from the VXM outward: `mem`, `sxm` and
    /// `mxm`, each once. A hemisphere holds half the MEM slices (one
    /// position each), half the SXM units (one position each) and one MXM
    /// position holding half the planes.
    pub outward: Vec<Unit>,
}

/// A kind of functional unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Matrix unit.
    Mxm,
    /// Switch unit.
    Sxm,
    /// Memory slice.
    Mem,
    /// Vector unit.
    Vxm,
}

impl Unit {
    /// The spelling in target files (`mem`).
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Mxm => "mxm",
            Unit::Sxm => "sxm",
            Unit::Mem => "mem",
            Unit::Vxm => "vxm",
        }
    }
}

/// `[mxm]`: weight-stationary systolic planes of int8 multiply-accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mxm {
    /// Rows of a plane: the reduction tile K (one vector of activations).
    pub rows: u32,
    /// Columns of a plane: the output tile N.
    pub cols: u32,
    /// Planes on the chip, half per hemisphere.
    pub planes: u32,
    /// Width of the accumulator in bits (int8 x int8 products summed in it).
    pub acc_bits: u32,
    /// Weight buffers per plane (2: the next install overlaps compute).
    pub weight_buffers: u32,
    /// Weight rows (one vector each) a plane takes from streams per cycle.
    pub install_rows_per_cycle: u32,
    /// Cycles to make an installed buffer the active weights.
    pub swap_cycles: u32,
    /// Side of a processing element: a `pe_block x pe_block` block of MACs
    /// that acts within one hop (docs/mxm-timing.md).
    pub pe_block: u32,
    /// Cycles for a value to cross one processing element.
    pub pe_hop_cycles: u32,
    /// Instruction queues per plane.
    pub queues_per_plane: u32,
}

/// `[vxm]`: the vector unit's ALUs and their latencies by instruction class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vxm {
    /// ALUs per lane; each is one instruction queue.
    pub alus_per_lane: u32,
    /// add, sub, mul, max, compare, select.
    pub alu_latency: u32,
    /// int <-> float conversion, round and clamp to int8.
    pub convert_latency: u32,
    /// div, sqrt, rsqrt, exp.
    pub special_latency: u32,
}

/// `[mem]`: SRAM slices, addressed in words of one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mem {
    /// Total bytes: `slices x words_per_slice x word_bytes`.
    pub bytes: u64,
    /// Slices, half per hemisphere; one instruction queue each.
    pub slices: u32,
    /// Words (addresses) in one slice.
    pub words_per_slice: u32,
    /// Bytes in a word: one vector.
    pub word_bytes: u32,
    /// Banks a slice's words are split across.
    pub banks_per_slice: u32,
    /// Reads per slice per cycle.
    pub read_ports: u32,
    /// Writes per slice per cycle.
    pub write_ports: u32,
    /// Cycles from a Read to its vector on the stream.
    pub read_latency_cycles: u32,
    /// Cycles from a Write to the word in SRAM.
    pub write_latency_cycles: u32,
}

/// `[sxm]`: shift, permute, distribute, rotate, transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sxm {
    /// Units, half per hemisphere.
    pub units: u32,
    /// Cycles of a lane shift.
    pub shift_latency: u32,
    /// Cycles of a permute (at least `vector.superlanes`: it needs the whole vector).
    pub permute_latency: u32,
    /// Cycles of a 16 x 16 transpose.
    pub transpose_latency: u32,
    /// Instruction queues per unit.
    pub queues_per_unit: u32,
}

/// `[icu]`: instruction control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Icu {
    /// Cycles from a Notify to the cycle the parked queues resume (all on
    /// the same cycle); 0 allowed.
    pub notify_latency_cycles: u32,
    /// Bytes of one encoded instruction.
    pub instruction_bytes: u32,
}

/// `[c2c]`: chip-to-chip links and the system of chips.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2c {
    /// Links per chip; one instruction queue each.
    pub links_per_chip: u32,
    /// Serial lanes per link.
    pub lanes_per_link: u32,
    /// Gigabits per second per lane, per direction.
    pub gbps_per_lane: f64,
    /// Cycles from a `send` issue to the vector arriving at the neighbour
    /// (serialisation included: at least [`Target::c2c_vector_cycles`]).
    pub link_latency_cycles: u32,
    /// Cycles from a `recv` issue to the vector on its stream.
    pub receive_latency_cycles: u32,
    /// Vectors a link's receiving end holds between their arrival and the
    /// `recv` (or `fwd`) that takes them; one more arriving is an overrun.
    pub receive_buffer_vectors: u32,
    /// Chips in a node (fully connected: `chips_per_node - 1` links each).
    pub chips_per_node: u32,
    /// Links per chip that join its node to other nodes (the Dragonfly's
    /// global links); `chips_per_node - 1 + global_links_per_chip <=
    /// links_per_chip`.
    pub global_links_per_chip: u32,
    /// Nodes in a rack.
    pub nodes_per_rack: u32,
    /// How nodes are connected.
    pub topology: Topology,
}

/// How nodes are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Groups of fully connected nodes, groups connected to each other.
    Dragonfly,
}

impl Target {
    /// A built-in target by name ([`BUILTIN`]).
    pub fn builtin(name: &str) -> Result<Target, TargetError> {
        let (_, text) =
            BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| TargetError::Unknown {
                    name: name.to_owned(),
                })?;
        Self::parse(text, Path::new(&format!("<builtin {name}>")))
    }

    /// Reads and validates a target description file.
    pub fn load(path: &Path) -> Result<Target, TargetError> {
        let text = std::fs::read_to_string(path).map_err(|error| TargetError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates a target description; `path` names it in
    /// diagnostics and becomes [`Target::source`].
    pub fn parse(text: &str, path: &Path) -> Result<Target, TargetError> {
        let mut target: Target = toml::from_str(text).map_err(|e| {
            let d = diag::toml_error(text, &e);
            TargetError::Syntax {
                path: path.to_path_buf(),
                line: d.line,
                col: d.col,
                key: d.key,
                message: d.message,
            }
        })?;
        target.source = path.to_path_buf();
        target.check(Some(text))?;
        Ok(target)
    }

    /// Validates a description that did not come from text (e.g. read back
    /// from an MLIR attribute); errors name [`Target::source`] and the key.
    pub fn validate(&self) -> Result<(), TargetError> {
        self.check(None)
    }

    fn check(&self, text: Option<&str>) -> Result<(), TargetError> {
        match validate::first_problem(self) {
            None => Ok(()),
            Some((key, message)) => Err(TargetError::Invalid {
                path: self.source.clone(),
                at: text.and_then(|t| diag::locate(t, &key)),
                key,
                message,
            }),
        }
    }
}
