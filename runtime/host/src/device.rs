//! The device interface the token loop drives: something that holds a
//! loaded program and its persistent memory, takes symbol values, runs the
//! program once, and hands symbol values back.
//!
//! The simulator (`q35_sim::Machine`) implements it; a many-chip system or
//! a real chip can stand in without touching [`crate::Session`]. Symbol
//! values cross this interface as **element bytes**: the symbol's elements
//! in row-major order, each little-endian (an f32 `[576]` symbol is 2304
//! bytes). Where those bytes lie in the device's memory is the device's
//! business ([`crate::layout`] is the q35 machine's rule).

/// What one run of the program cost on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Cycles the run took (the program's cycle count, docs/isa.md 2).
    pub cycles: u64,
    /// Instructions issued (repetitions of `repeat` counted), if the device
    /// counts them.
    pub instructions: u64,
}

/// Why a device refused a request.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The program has no symbol of that name.
    #[error("the program has no symbol `{name}`")]
    NoSymbol {
        /// The name asked for.
        name: String,
    },
    /// A value of the wrong size for the symbol.
    #[error("symbol `{name}` holds {expected} bytes ({what}); {got} bytes were given")]
    Size {
        /// The symbol.
        name: String,
        /// Bytes given.
        got: usize,
        /// Bytes it holds.
        expected: usize,
        /// Its element type and shape, e.g. `f32 [576]`.
        what: String,
    },
    /// The symbol's placement is not one the device can read or write.
    #[error("symbol `{name}`: {error}")]
    Layout {
        /// The symbol.
        name: String,
        /// Why.
        error: crate::layout::LayoutError,
    },
    /// The binary has no further program of that name.
    #[error("the binary has no program `{name}`")]
    NoProgram {
        /// The name asked for.
        name: String,
    },
    /// The run stopped: a hazard, a cycle limit, anything the device reports.
    #[error("{0}")]
    Run(String),
}

/// A device that runs one loaded program many times on persistent state
/// (weights and the KV cache stay in its memory between runs).
pub trait Device {
    /// Writes `bytes` (element bytes, see the module docs) into symbol `name`.
    fn write_symbol(&mut self, name: &str, bytes: &[u8]) -> Result<(), DeviceError>;
    /// Reads symbol `name` as element bytes.
    fn read_symbol(&mut self, name: &str) -> Result<Vec<u8>, DeviceError>;
    /// Runs the program once from its start on the device's current state.
    fn run(&mut self) -> Result<StepStats, DeviceError>;

    /// Makes `program` (a further program of the binary, by name; `None`:
    /// the first) the one later symbol writes, reads and runs use. Memory
    /// is shared: weights and the KV cache stay where they are. A device
    /// with one program refuses any other.
    fn select_program(&mut self, program: Option<&str>) -> Result<(), DeviceError> {
        match program {
            None => Ok(()),
            Some(name) => Err(DeviceError::NoProgram {
                name: name.to_string(),
            }),
        }
    }

    /// Runs `program` (`None`: the first) once on the current state and
    /// selects the first program again, whether or not the run succeeded.
    /// A further program shares the first's symbols (a context bucket), so
    /// the inputs written before and the outputs read after are its own.
    fn run_program(&mut self, program: Option<&str>) -> Result<StepStats, DeviceError> {
        let Some(name) = program else {
            return self.run();
        };
        self.select_program(Some(name))?;
        let run = self.run();
        self.select_program(None)?;
        run
    }
}

/// Element bytes of `values` (little-endian f32).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Element bytes of `values` (little-endian u16).
pub fn u16_bytes(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The f32 values of element bytes (a trailing partial element is dropped;
/// callers check sizes first).
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
