//! Programs for the engine benchmark (`benches/engine.rs`) and the replay
//! differential test (`tests/replay.rs`), built through q35-isa's `Program`
//! API:
//!
//! - **matmul**: two west MXM planes fed tile after tile. Seven MEM slices
//!   read packed 3.5-bit weight words, the VXM unpacks them (`unpack35`, 16
//!   int8 rows a cycle), each plane loads the rows (`lw`, 16 a cycle), swaps
//!   them in and streams 320 activation vectors through (`mm`) while the
//!   next tile loads.
//! - **vector**: a 12-stage VXM f32 chain (`fmul`/`fadd`, one ALU queue a
//!   stage, every cycle) fed from MEM, an SXM `shift` of the chain's output
//!   (by 160 f32 lanes of 320) and a VXM `fadd` of the shifted vector: the
//!   first step of the lane reduction of a vector.

use q35_isa::{
    Acc, DType, ElemWidth, Instruction, MemData, MemInit, Placement, Program, QueueId, Stream,
};

/// A queue by name.
pub fn q(name: &str) -> QueueId {
    name.parse().expect("queue name")
}

/// A queue's instruction list, built cycle by cycle.
struct Queue {
    list: Vec<Instruction>,
    /// The cycle the next instruction issues.
    at: u64,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            list: Vec::new(),
            at: 0,
        }
    }
    /// Waits until `cycle` (no-op if already there).
    fn until(&mut self, cycle: u64) {
        assert!(
            cycle >= self.at,
            "queue scheduled backwards: {cycle} < {}",
            self.at
        );
        let mut gap = cycle - self.at;
        while gap > 0 {
            let n = gap.min((1 << 24) - 1);
            self.list.push(Instruction::Nop { n: n as u32 });
            gap -= n;
        }
        self.at = cycle;
    }
    /// Issues `ins` now, then repeats it `times - 1` more times, one a cycle.
    fn run(&mut self, ins: Instruction, times: u32, stride: i32) {
        self.list.push(ins);
        self.at += 1;
        if times > 1 {
            self.list.push(Instruction::Repeat {
                n: times - 1,
                d: 1,
                stride,
            });
            self.at += u64::from(times - 1);
        }
    }
    fn halt(mut self) -> Vec<Instruction> {
        self.list.push(Instruction::Halt {});
        self.list
    }
}

fn random_bytes(state: &mut u64, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*state >> 56) as u32
        })
        .collect()
}

/// The matmul-heavy program: `tiles` weight tiles per plane on planes 0, 1.
/// The weights and activations come from `seed`.
pub fn matmul_program(tiles: u64, seed: u64) -> Program {
    let mut p = Program::new("lpu-v1");
    let mut seed = seed;
    // Packed weights: 20 words (one tile: 320 rows / 16 per cycle) in each
    // of mem.e0..e6 (position 47 + j), byte j of the 56-bit pair words.
    for j in 0..7 {
        p.mem.push(MemInit {
            at: Placement {
                slices: vec![q(&format!("mem.e{j}"))],
                addr: 0,
            },
            dtype: DType::U8,
            data: MemData::Values(random_bytes(&mut seed, 20 * 320)),
        });
    }
    // Activations: one int8 word per plane in mem.w43 (2) and mem.w42 (3).
    for s in ["mem.w43", "mem.w42"] {
        p.mem.push(MemInit {
            at: Placement {
                slices: vec![q(s)],
                addr: 0,
            },
            dtype: DType::I8,
            data: MemData::Values(random_bytes(&mut seed, 320)),
        });
    }
    let period = 960u64;
    let base = 100u64;
    let mut packed: Vec<Queue> = (0..7).map(|_| Queue::new()).collect();
    let mut vxm = Queue::new();
    let mut planes = [Queue::new(), Queue::new()];
    let mut acts = [Queue::new(), Queue::new()];
    for tile in 0..tiles {
        for plane in 0..2u64 {
            let t0 = base + tile * period + plane * period / 2;
            // lw reads rows 16 a cycle on t0 .. t0+19 at position 0: the
            // unpack35 results leave the VXM (46) 46 cycles earlier, 4
            // cycles after its issue, whose inputs left mem.e<j> 2 + j
            // cycles before that.
            let u = t0 - 50;
            vxm.until(u);
            vxm.run(
                Instruction::Unpack35 {
                    src: Stream::west(0),
                    dst: Stream::west(16),
                    m4: 4,
                    m3: 7,
                },
                20,
                0,
            );
            for (j, qu) in packed.iter_mut().enumerate() {
                qu.until(u - 2 - j as u64);
                qu.run(
                    Instruction::Read {
                        addr: 0,
                        dst: Stream::west(j as u8),
                    },
                    20,
                    1,
                );
            }
            let pl = &mut planes[plane as usize];
            pl.until(t0);
            pl.run(
                Instruction::Lw {
                    src: Stream::west(16),
                    k: 16,
                    n: 320,
                },
                1,
                0,
            );
            // The previous tile's last vector left the array by now.
            pl.until(t0 + 20);
            pl.run(Instruction::Iw {}, 1, 0);
            pl.run(
                Instruction::Mm {
                    src: Stream::west(plane as u8),
                    dst: Stream::east(4 * plane as u8),
                    acc: Acc::New,
                },
                320,
                0,
            );
            // Activations on s<plane>.w at 0 on t0 + 21 ..: from position
            // 2 + plane, read 3 + plane cycles earlier.
            let a = &mut acts[plane as usize];
            a.until(t0 + 21 - 3 - plane);
            a.run(
                Instruction::Read {
                    addr: 0,
                    dst: Stream::west(plane as u8),
                },
                320,
                0,
            );
        }
    }
    for (j, qu) in packed.into_iter().enumerate() {
        p.queues.insert(q(&format!("mem.e{j}")), qu.halt());
    }
    p.queues.insert(q("vxm.0"), vxm.halt());
    let [p0, p1] = planes;
    p.queues.insert(q("mxm.0"), p0.halt());
    p.queues.insert(q("mxm.1"), p1.halt());
    let [a0, a1] = acts;
    p.queues.insert(q("mem.w43"), a0.halt());
    p.queues.insert(q("mem.w42"), a1.halt());
    p
}

/// The vector-heavy program: `cycles` cycles of steady state, timed for an
/// SXM shift latency of `shift_latency` cycles.
pub fn vector_program(cycles: u32, shift_latency: u64) -> Program {
    let mut p = Program::new("lpu-v1");
    p.mem.push(MemInit {
        at: Placement {
            slices: (0..4).map(|j| q(&format!("mem.w{j}"))).collect(),
            addr: 0,
        },
        dtype: DType::F32,
        data: MemData::Fill {
            value: 1.0001f32.to_bits(),
            count: 320,
        },
    });
    let t0 = 10u64;
    // f32 groups: G0 = s0.e (from MEM), G1..G7 = s4.e .. s28.e, G8..G12 =
    // s0.w .. s16.w; the SXM writes s20.w, the last fadd s24.w.
    let group = |k: u64| -> Stream {
        if k < 8 {
            Stream::east(4 * k as u8)
        } else {
            Stream::west(4 * (k - 8) as u8)
        }
    };
    for j in 0..4u64 {
        let mut m = Queue::new();
        m.until(t0 - j - 2);
        m.run(
            Instruction::Read {
                addr: 0,
                dst: Stream::east(j as u8),
            },
            cycles,
            0,
        );
        p.queues.insert(q(&format!("mem.w{j}")), m.halt());
    }
    for k in 0..12u64 {
        let mut v = Queue::new();
        v.until(t0 + 4 * k);
        let (a, dst) = (group(k), group(k + 1));
        let ins = if k % 2 == 0 {
            Instruction::Fmul { a, b: a, dst }
        } else {
            Instruction::Fadd { a, b: a, dst }
        };
        v.run(ins, cycles, 0);
        p.queues.insert(q(&format!("vxm.{k}")), v.halt());
    }
    // G7 leaves the VXM (46) on t0 + 28 and reaches sxm.e (91) 45 later; the
    // shifted vector (sxm.shift_latency later) is back at 46 45 cycles after
    // that.
    let at_sxm = t0 + 28 + 45;
    let mut s = Queue::new();
    s.until(at_sxm);
    s.run(
        Instruction::Shift {
            src: group(7),
            dst: Stream::west(20),
            n: 160,
            w: 320,
            ew: ElemWidth::B4,
        },
        cycles,
        0,
    );
    p.queues.insert(q("sxm.e"), s.halt());
    let mut v = Queue::new();
    v.until(at_sxm + shift_latency + 45);
    v.run(
        Instruction::Fadd {
            a: Stream::west(20),
            b: Stream::west(20),
            dst: Stream::west(24),
        },
        cycles,
        0,
    );
    p.queues.insert(q("vxm.12"), v.halt());
    p
}
