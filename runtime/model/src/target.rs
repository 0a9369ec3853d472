//! Target machine descriptions (targets/*.toml): the parameters of q35's
//! LPU-style machine model. `lpu-v1` is built in.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ModelError, syntax_error};

/// The built-in targets, by name, with the text of their description.
pub const BUILTIN: &[(&str, &str)] = &[("lpu-v1", include_str!("../../../targets/lpu-v1.toml"))];

/// A target machine: the figures the compiler's passes and the simulator's
/// timing model are parameterised by.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Target name (`lpu-v1`).
    pub name: String,
    /// Where the description came from (`<builtin>` or a file).
    pub source: PathBuf,
    /// Core clock.
    pub clock_mhz: f64,
    /// Systolic matrix unit rows (the reduction tile, K).
    pub mxm_rows: u32,
    /// Systolic matrix unit columns (the output tile, N).
    pub mxm_cols: u32,
    /// Number of matrix planes.
    pub mxm_planes: u32,
    /// Cycles to install a full plane of weights.
    pub mxm_weight_install_cycles: u32,
    /// Cycles to skew an input vector into the array.
    pub mxm_fill_cycles: u32,
    /// Cycles to drain accumulators out of the array.
    pub mxm_drain_cycles: u32,
    /// Vector unit lanes.
    pub vector_lanes: u32,
    /// ALUs per vector lane.
    pub vxm_alus_per_lane: u32,
    /// Latency of one point-wise vector op.
    pub vxm_pipeline_cycles: u32,
    /// On-chip SRAM capacity.
    pub sram_bytes: u64,
    /// SRAM slices.
    pub sram_slices: u32,
    /// SRAM read latency.
    pub sram_read_latency_cycles: u32,
    /// Stream registers per direction.
    pub stream_registers: u32,
    /// Cycles per stream hop.
    pub stream_hop_cycles: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    #[expect(
        dead_code,
        reason = "documentation for humans; parsed so typos are caught"
    )]
    description: Option<String>,
    clock_mhz: f64,
    mxm: RawMxm,
    vxm: RawVxm,
    mem: RawMem,
    streams: RawStreams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMxm {
    rows: u32,
    cols: u32,
    planes: u32,
    weight_install_cycles: u32,
    fill_cycles: u32,
    drain_cycles: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVxm {
    lanes: u32,
    alus_per_lane: u32,
    pipeline_cycles: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMem {
    bytes: u64,
    slices: u32,
    read_latency_cycles: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStreams {
    per_direction: u32,
    hop_cycles: u32,
}

impl Target {
    /// A built-in target by name.
    pub fn builtin(name: &str) -> Option<Target> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        Some(
            Self::parse(text, Path::new(&format!("<builtin {name}>")))
                .expect("built-in targets are valid (tested)"),
        )
    }

    /// Reads a target description file.
    pub fn load(path: &Path) -> Result<Target, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates a target description.
    pub fn parse(text: &str, path: &Path) -> Result<Target, ModelError> {
        let raw: RawTarget = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        let t = Target {
            name: raw.name,
            source: path.to_path_buf(),
            clock_mhz: raw.clock_mhz,
            mxm_rows: raw.mxm.rows,
            mxm_cols: raw.mxm.cols,
            mxm_planes: raw.mxm.planes,
            mxm_weight_install_cycles: raw.mxm.weight_install_cycles,
            mxm_fill_cycles: raw.mxm.fill_cycles,
            mxm_drain_cycles: raw.mxm.drain_cycles,
            vector_lanes: raw.vxm.lanes,
            vxm_alus_per_lane: raw.vxm.alus_per_lane,
            vxm_pipeline_cycles: raw.vxm.pipeline_cycles,
            sram_bytes: raw.mem.bytes,
            sram_slices: raw.mem.slices,
            sram_read_latency_cycles: raw.mem.read_latency_cycles,
            stream_registers: raw.streams.per_direction,
            stream_hop_cycles: raw.streams.hop_cycles,
        };
        let invalid = |key: &str, message: &str| ModelError::Invalid {
            path: path.to_path_buf(),
            at: None,
            key: key.to_owned(),
            message: message.to_owned(),
        };
        if !(t.clock_mhz.is_finite() && t.clock_mhz > 0.0) {
            return Err(invalid("clock_mhz", "must be a positive number of MHz"));
        }
        for (key, v) in [
            ("mxm.rows", t.mxm_rows),
            ("mxm.cols", t.mxm_cols),
            ("mxm.planes", t.mxm_planes),
            ("vxm.lanes", t.vector_lanes),
            ("vxm.alus_per_lane", t.vxm_alus_per_lane),
            ("mem.slices", t.sram_slices),
            ("streams.per_direction", t.stream_registers),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if t.sram_bytes == 0 {
            return Err(invalid("mem.bytes", "must be at least 1"));
        }
        Ok(t)
    }

    /// Peak int8 multiply-accumulates per second.
    pub fn peak_macs_per_second(&self) -> f64 {
        f64::from(self.mxm_rows)
            * f64::from(self.mxm_cols)
            * f64::from(self.mxm_planes)
            * self.clock_mhz
            * 1e6
    }
}
