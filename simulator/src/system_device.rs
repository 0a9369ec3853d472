//! A system of chips as one [`q35_host::Device`] (docs/backend.md 8): the
//! host's token loop drives a pipeline-split model exactly as it drives one
//! chip. A symbol is written to every chip whose program has it (the
//! step's index vectors and mask go to every chip that attends, the token's
//! embedding to the first), read from the first chip that has it (an
//! output from the last one: the logits, each block's KV cache from its chip), and a
//! run is one lockstep run of the whole system ([`System::run_once`]),
//! whose cycles are the last chip's.

use q35_host::{Device, DeviceError, StepStats, SymbolLayout};
use q35_lpubin::{LpuBinary, Symbol};

use crate::config::MachineConfig;
use crate::system::{System, SystemBuildError, SystemRun};

/// A [`System`] with its chips' symbols, run as one device.
#[derive(Debug)]
pub struct SystemDevice<'b> {
    system: System<'b>,
    binaries: Vec<&'b LpuBinary>,
    runs: u64,
    last: Option<SystemRun>,
}

impl<'b> SystemDevice<'b> {
    /// Loads chip `i`'s program `programs[i]` into a system of
    /// `programs.len()` chips of `config`'s target.
    pub fn new(
        programs: &[&'b LpuBinary],
        config: MachineConfig,
    ) -> Result<SystemDevice<'b>, SystemBuildError> {
        Ok(SystemDevice {
            system: System::new(programs, config)?,
            binaries: programs.to_vec(),
            runs: 0,
            last: None,
        })
    }

    /// The system.
    pub fn system(&self) -> &System<'b> {
        &self.system
    }

    /// The system, to set its threads or cycle limit.
    pub fn system_mut(&mut self) -> &mut System<'b> {
        &mut self.system
    }

    /// The last run's per-chip profiles and link use.
    pub fn last_run(&self) -> Option<&SystemRun> {
        self.last.as_ref()
    }

    /// The chips whose programs have symbol `name`, with its layout.
    fn holders(&self, name: &str) -> Result<Vec<(usize, SymbolLayout, &'b Symbol)>, DeviceError> {
        let mut out = Vec::new();
        for (chip, bin) in self.binaries.iter().enumerate() {
            let Some(sym) = bin.symbol(name) else {
                continue;
            };
            let layout_err = |error| DeviceError::Layout {
                name: format!("chip {chip}: {name}"),
                error,
            };
            let l = SymbolLayout::of(sym).map_err(layout_err)?;
            let state = self
                .system
                .state(chip)
                .ok_or_else(|| DeviceError::Run(format!("chip {chip} has no state")))?;
            l.check_bounds(state.mem.len(), self.system.config().mem.words_per_slice)
                .map_err(layout_err)?;
            out.push((chip, l, sym));
        }
        if out.is_empty() {
            return Err(DeviceError::NoSymbol {
                name: name.to_string(),
            });
        }
        Ok(out)
    }
}

impl Device for SystemDevice<'_> {
    fn write_symbol(&mut self, name: &str, bytes: &[u8]) -> Result<(), DeviceError> {
        for (chip, l, sym) in self.holders(name)? {
            if bytes.len() != l.byte_len() {
                return Err(DeviceError::Size {
                    name: format!("chip {chip}: {name}"),
                    got: bytes.len(),
                    expected: l.byte_len(),
                    what: format!("{} {:?}", sym.elem, sym.shape),
                });
            }
            let state = self
                .system
                .state_mut(chip)
                .ok_or_else(|| DeviceError::Run(format!("chip {chip} has no state")))?;
            for (slice, addr, word) in l.to_words(bytes) {
                state.mem[usize::from(slice)]
                    .word_mut(addr)
                    .copy_from_slice(&word);
            }
        }
        Ok(())
    }

    fn read_symbol(&mut self, name: &str) -> Result<Vec<u8>, DeviceError> {
        // An output (the logits) is complete on the last chip that has it:
        // a batch's LM head may run on several chips, each passing the
        // logits on with its rows written. Anything else is read from the
        // first chip that has it (each block's KV cache has one).
        let holders = self.holders(name)?;
        let output = holders
            .first()
            .is_some_and(|(_, _, sym)| sym.kind == q35_lpubin::SymbolKind::Output);
        let pick = if output {
            holders.into_iter().next_back()
        } else {
            holders.into_iter().next()
        };
        let (chip, l, _) = pick.ok_or_else(|| DeviceError::NoSymbol {
            name: name.to_string(),
        })?;
        let state = self
            .system
            .state(chip)
            .ok_or_else(|| DeviceError::Run(format!("chip {chip} has no state")))?;
        Ok(l.from_words(|slice, addr| &state.mem[usize::from(slice)].word(addr)[..]))
    }

    fn run(&mut self) -> Result<StepStats, DeviceError> {
        let run = self.runs;
        self.runs += 1;
        match self.system.run_once() {
            Ok(r) => {
                let stats = StepStats {
                    cycles: r.cycles,
                    instructions: r.chips.iter().map(|c| c.profile.instructions()).sum(),
                };
                self.last = Some(r);
                Ok(stats)
            }
            Err(stop) => Err(DeviceError::Run(format!("run {run}: {stop}"))),
        }
    }
}
