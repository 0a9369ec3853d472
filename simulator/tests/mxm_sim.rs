//! Differential: the MXM instructions run through the whole simulator
//! (MEM reads, streams, `lw` rows read cycle by cycle, `iw`, `mm` with random
//! accumulate flags, results written back to MEM) against the PE-level plane
//! model of `q35_sim::mxm::pe` given the same timed commands. Every output
//! value must agree, and the simulator's results must be on their streams
//! on the PE model's emit cycles (the writes that pick them up issue on
//! exactly those cycles plus the hops, or the run stops with a hazard).

use q35_isa::{Acc, DType, Instruction, MemData, MemInit, Placement, Program, QueueId, Stream};
use q35_lpubin::LpuBinary;
use q35_sim::mxm::{Command, PlaneConfig, WeightTile, run_pe};

fn q(name: &str) -> QueueId {
    name.parse().expect("queue name")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as i8).collect()
    }
}

/// Nops up to `cycle`, given the queue is at `at`.
fn wait(list: &mut Vec<Instruction>, at: &mut u64, cycle: u64) {
    assert!(cycle >= *at);
    if cycle > *at {
        list.push(Instruction::Nop {
            n: (cycle - *at) as u32,
        });
    }
    *at = cycle;
}

fn mem(slice: &str, addr: u32, dtype: DType, values: Vec<u32>) -> MemInit {
    MemInit {
        at: Placement {
            slices: vec![q(slice)],
            addr,
        },
        dtype,
        data: MemData::Values(values),
    }
}

/// One random case: `n` weight rows, `m` vectors.
fn case(seed: u64, n: usize, m: usize) {
    let mut rng = Rng(seed);
    let cols = 320;
    let weights = rng.i8s(n * cols);
    let vectors: Vec<Vec<i8>> = (0..m).map(|_| rng.i8s(320)).collect();
    let accs: Vec<bool> = (0..m)
        .map(|i| i > 0 && rng.next().is_multiple_of(2))
        .collect();

    // Plane 2 stands at position 92. Row r leaves mem.e43 (90) on 1 + r and
    // is on s0.e at 92 on t + r (t = 4); iw when the load is done; vector i
    // leaves mem.e42 (89) 4 cycles before its mm.
    let t = 4u64;
    let iw = t + n as u64;
    let mm0 = iw + 1;
    let latency = PlaneConfig::LPU_V1.latency();
    let mut p = Program::new("lpu-v1");
    for (r, row) in weights.chunks(cols).enumerate() {
        p.mem.push(mem(
            "mem.e43",
            r as u32,
            DType::I8,
            row.iter().map(|&w| u32::from(w as u8)).collect(),
        ));
    }
    for (i, v) in vectors.iter().enumerate() {
        p.mem.push(mem(
            "mem.e42",
            i as u32,
            DType::I8,
            v.iter().map(|&x| u32::from(x as u8)).collect(),
        ));
    }
    // Results: byte j of vector i's sums is on s<j>.w at 92 on mm0 + i +
    // latency, at mem.e<43-j> (90 - j) 2 + j cycles later: word 1000 + i.
    let emit0 = mm0 + latency;
    let mut queues: Vec<(&str, Vec<Instruction>, u64)> =
        ["mem.e43", "mem.e42", "mem.e41", "mem.e40"]
            .into_iter()
            .map(|s| (s, Vec::new(), 0u64))
            .collect();
    {
        let (_, list, at) = &mut queues[0];
        wait(list, at, t - 3);
        list.push(Instruction::Read {
            addr: 0,
            dst: Stream::east(0),
        });
        *at += 1;
        if n > 1 {
            list.push(Instruction::Repeat {
                n: n as u32 - 1,
                d: 1,
                stride: 1,
            });
            *at += n as u64 - 1;
        }
    }
    {
        let (_, list, at) = &mut queues[1];
        wait(list, at, mm0 - 4);
        list.push(Instruction::Read {
            addr: 0,
            dst: Stream::east(1),
        });
        *at += 1;
        if m > 1 {
            list.push(Instruction::Repeat {
                n: m as u32 - 1,
                d: 1,
                stride: 1,
            });
            *at += m as u64 - 1;
        }
    }
    for (j, (_, list, at)) in queues.iter_mut().enumerate() {
        wait(list, at, emit0 + 2 + j as u64);
        list.push(Instruction::Write {
            addr: 1000,
            src: Stream::west(j as u8),
        });
        *at += 1;
        if m > 1 {
            list.push(Instruction::Repeat {
                n: m as u32 - 1,
                d: 1,
                stride: 1,
            });
            *at += m as u64 - 1;
        }
        list.push(Instruction::Halt {});
    }
    for (name, list, _) in queues {
        p.queues.insert(q(name), list);
    }
    let mut plane = vec![Instruction::Nop { n: t as u32 }];
    plane.push(Instruction::Lw {
        src: Stream::east(0),
        k: 1,
        n: n as u32,
    });
    if n > 1 {
        plane.push(Instruction::Nop { n: n as u32 - 1 });
    }
    plane.push(Instruction::Iw {});
    for &acc in &accs {
        plane.push(Instruction::Mm {
            src: Stream::east(1),
            dst: Stream::west(0),
            acc: if acc { Acc::Add } else { Acc::New },
        });
    }
    plane.push(Instruction::Halt {});
    p.queues.insert(q("mxm.2"), plane);
    for i in 0..m {
        p.symbols.push(q35_isa::Symbol {
            name: format!("y{i}"),
            kind: q35_lpubin::SymbolKind::Output,
            dtype: DType::I32,
            dims: vec![320],
            at: Placement {
                slices: ["mem.e43", "mem.e42", "mem.e41", "mem.e40"].map(q).to_vec(),
                addr: 1000 + i as u32,
            },
        });
    }

    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("case.lpubin");
    p.to_lpubin(&config.target, "mxm_sim test")
        .expect("encodes")
        .write_to(&path)
        .expect("written");
    let binary = LpuBinary::open(&path).expect("opens");
    let finished = match q35_sim::run(&binary, &config, None).expect("loads") {
        Ok(f) => f,
        Err(stop) => panic!("seed {seed}: {stop:?}"),
    };

    let commands = std::iter::once((
        t,
        Command::LoadWeights(WeightTile::new(n, cols, weights.clone()).expect("tile")),
    ))
    .chain(std::iter::once((iw, Command::Swap)))
    .chain(vectors.iter().zip(&accs).enumerate().map(|(i, (v, &acc))| {
        (
            mm0 + i as u64,
            Command::Multiply {
                vector: v.clone(),
                accumulate: acc,
            },
        )
    }))
    .collect::<Vec<_>>();
    let pe = run_pe(&PlaneConfig::LPU_V1, &commands).expect("PE model runs");
    assert_eq!(pe.hazard, None, "seed {seed}");
    assert_eq!(pe.outputs.len(), m);
    for (i, out) in pe.outputs.iter().enumerate() {
        assert_eq!(out.cycle, mm0 + i as u64 + latency, "seed {seed}: emit {i}");
        let sym = binary.symbol(&format!("y{i}")).expect("symbol");
        let got = q35_sim::dump::read_symbol(&finished.state, sym).expect("dump");
        let got: Vec<i32> = got.bits.iter().map(|&b| b as i32).collect();
        assert_eq!(got, out.values, "seed {seed}: vector {i}");
    }
    // The last write issues on emit0 + m - 1 + 2 + 3 and its queue halts on
    // the next cycle; + 19 cycles of superlane skew.
    assert_eq!(
        finished.profile.total_cycles(),
        emit0 + m as u64 + 5 + 19,
        "seed {seed}"
    );
}

#[test]
fn simulator_mxm_matches_the_pe_model() {
    for (seed, n, m) in [(1, 320, 3), (2, 17, 2), (3, 1, 1), (4, 200, 4)] {
        case(seed, n, m);
    }
}
