//! What a run cost: total cycles (with the superlane skew), busy cycles per
//! unit (each MEM slice, each VXM ALU queue, each MXM plane, each SXM) and
//! instruction counts.
//!
//! A unit is busy for an instruction's occupancy (the table's `occupancy`:
//! 1 for most, `ceil(n / k)` for `lw`, 0 for control) from its issue cycle.
//! Utilisation is busy cycles over total cycles.

use std::collections::BTreeMap;

use q35_isa::{Instruction, QueueId, Unit};
use serde_json::{Value, json};

/// Counters of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Busy cycles by dense queue number.
    busy: Vec<u64>,
    /// Issued instructions by queue (repetitions count one each).
    issued: Vec<u64>,
    /// Issued instructions by opcode byte.
    by_opcode: [u64; 256],
    /// The last cycle anything happened on superlane 0.
    last_cycle: u64,
    /// `last_cycle + (superlanes - 1) * skew`.
    total_cycles: u64,
}

impl Profile {
    /// Zero counters for `queues` queues.
    pub fn new(queues: usize) -> Profile {
        Profile {
            busy: vec![0; queues],
            issued: vec![0; queues],
            by_opcode: [0; 256],
            last_cycle: 0,
            total_cycles: 0,
        }
    }

    /// Counts one issued instruction of queue `q` busy for `occupancy`.
    pub fn issued(&mut self, q: u16, ins: &Instruction, occupancy: u64) {
        self.busy[usize::from(q)] += occupancy;
        self.issued[usize::from(q)] += 1;
        self.by_opcode[ins.opcode() as usize] += 1;
    }

    /// Sets the cycle counts at the end of the run.
    pub fn finish(&mut self, last_cycle: u64, total_cycles: u64) {
        self.last_cycle = last_cycle;
        self.total_cycles = total_cycles;
    }

    /// The program's cycle count: last event plus the superlane skew.
    pub fn total_cycles(&self) -> u64 {
        self.total_cycles
    }

    /// The last cycle anything happened on superlane 0.
    pub fn last_cycle(&self) -> u64 {
        self.last_cycle
    }

    /// Busy cycles of queue `q`'s unit.
    pub fn busy(&self, q: QueueId) -> u64 {
        self.busy[usize::from(q.index())]
    }

    /// Instructions issued in all (every repetition counts).
    pub fn instructions(&self) -> u64 {
        self.issued.iter().sum()
    }

    /// [`Profile::by_mnemonic`] as text: `mnemonic count`, comma-separated.
    pub fn mnemonic_counts(&self) -> String {
        self.by_mnemonic()
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Instructions issued by mnemonic, in table order, non-zero only.
    pub fn by_mnemonic(&self) -> Vec<(&'static str, u64)> {
        q35_isa::INSTRUCTIONS
            .iter()
            .filter_map(|i| {
                let n = self.by_opcode[i.opcode as usize];
                (n > 0).then_some((i.mnemonic, n))
            })
            .collect()
    }

    /// Utilisation of a unit busy `busy` cycles, in percent.
    pub fn percent(&self, busy: u64) -> f64 {
        if self.total_cycles == 0 {
            0.0
        } else {
            100.0 * busy as f64 / self.total_cycles as f64
        }
    }

    /// Busy cycles grouped for reports: `(group, [(queue, busy)])` with
    /// groups MEM, VXM, SXM and one per MXM plane; queues that were never
    /// busy are left out of MEM, VXM and SXM.
    pub fn groups(&self) -> Vec<(String, Vec<(QueueId, u64)>)> {
        let mut groups: BTreeMap<(u8, String), Vec<(QueueId, u64)>> = BTreeMap::new();
        for q in QueueId::all() {
            let busy = self.busy(q);
            let key = match q.unit() {
                Unit::Mem => (0, "MEM".to_string()),
                Unit::Vxm => (1, "VXM".to_string()),
                Unit::Sxm => (2, "SXM".to_string()),
                Unit::Mxm => (3, format!("MXM {q}")),
                Unit::C2c => (4, "C2C".to_string()),
                Unit::Control => continue,
            };
            if busy == 0 && q.unit() == Unit::C2c {
                continue;
            }
            if busy == 0 && matches!(q.unit(), Unit::Mem | Unit::Vxm | Unit::Sxm) {
                groups.entry(key).or_default();
                continue;
            }
            groups.entry(key).or_default().push((q, busy));
        }
        groups.into_iter().map(|((_, name), v)| (name, v)).collect()
    }

    /// The profile as JSON.
    pub fn to_json(&self) -> Value {
        let units: serde_json::Map<String, Value> = QueueId::all()
            .filter(|&q| self.busy(q) > 0 || self.issued[usize::from(q.index())] > 0)
            .map(|q| {
                (
                    q.to_string(),
                    json!({
                        "busy_cycles": self.busy(q),
                        "utilisation_percent": self.percent(self.busy(q)),
                        "instructions": self.issued[usize::from(q.index())],
                    }),
                )
            })
            .collect();
        let mnemonics: serde_json::Map<String, Value> = self
            .by_mnemonic()
            .into_iter()
            .map(|(m, n)| (m.to_string(), json!(n)))
            .collect();
        json!({
            "total_cycles": self.total_cycles,
            "last_cycle": self.last_cycle,
            "instructions": self.instructions(),
            "units": units,
            "by_mnemonic": mnemonics,
        })
    }
}
