//! The pipeline split of a decode step over the chips of a system
//! (docs/backend.md 8): contiguous blocks per chip, balanced by weight
//! bytes, each chip's part a [`Plan`] of its own joined to its neighbours
//! by [`PlanOp::Send`] and [`PlanOp::Recv`] of the residual stream, and
//! [`compile_system`], which compiles the stages in chip order so that
//! every `recv` is scheduled after its vector arrives.
//!
//! Which op belongs to which block is read from the names the plan uses:
//! an op of block `b` names a weight, buffer or label `blk.<b>.…` or the
//! caches `kcache_<b>`/`vcache_<b>`; ops naming no block between two
//! blocks go with the earlier one; the ops after the last block (the final
//! norm and the LM head) go to the last chip.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use q35_target::Target;

use crate::machine::Cycle;
use crate::plan::{BufferKind, CodegenError, Compiled, Links, Plan, PlanOp, compile_stage};

/// One chip's part of a split plan.
#[derive(Clone, Debug)]
pub struct Stage {
    /// The chip it runs on (stage `k` on chip `k`).
    pub chip: u32,
    /// The blocks it holds.
    pub blocks: Range<u32>,
    /// Whether it holds the final norm and the LM head (the last chip).
    pub head: bool,
    /// Bytes of its weights (3.5-bit codes, scales and slot masks).
    pub weight_bytes: u64,
    /// The residual stream it receives (from chip `chip - 1`), if any:
    /// buffer and elements.
    pub receives: Option<(String, u32)>,
    /// The residual stream it sends (to chip `chip + 1`), if any.
    pub sends: Option<(String, u32)>,
    /// Its plan: the stage's ops between a [`PlanOp::Recv`] and a
    /// [`PlanOp::Send`], and only the buffers and weights they use.
    pub plan: Plan,
}

fn err(op: &str, message: impl Into<String>) -> CodegenError {
    CodegenError::Plan {
        op: op.to_string(),
        message: message.into(),
    }
}

/// The block a name belongs to: `blk.<b>.…`, `kcache_<b>`, `vcache_<b>`.
fn block_of_name(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("blk.") {
        return rest.split('.').next().and_then(|b| b.parse().ok());
    }
    name.strip_prefix("kcache_")
        .or_else(|| name.strip_prefix("vcache_"))
        .and_then(|b| b.parse().ok())
}

/// The block of an op: its label's, else the first of its names that has one.
fn block_of(label: &str, op: &PlanOp) -> Option<u32> {
    let weight = match op {
        PlanOp::MatMul { weight, .. } | PlanOp::RmsNorm { weight, .. } => Some(weight.as_str()),
        _ => None,
    };
    std::iter::once(label)
        .chain(weight)
        .chain(op.buffers())
        .find_map(block_of_name)
}

/// The buffers `op` reads and writes.
fn reads_writes(op: &PlanOp) -> (Vec<&str>, Vec<&str>) {
    match op {
        PlanOp::RmsNorm { x, weight, y, .. } => (vec![x, weight], vec![y]),
        PlanOp::Quantize { x, xs, scale, .. } => (vec![x], vec![xs, scale]),
        PlanOp::MatMul { xs, scale, y, .. } => (vec![xs, scale], vec![y]),
        PlanOp::Rope { x, y, .. } => (vec![x, "pos_idx", "rope_cos", "rope_sin"], vec![y]),
        PlanOp::KvWrite {
            k,
            v,
            kcache,
            vcache,
        } => (vec![k, v, "kv_idx", "pos_idx"], vec![kcache, vcache]),
        PlanOp::Attention {
            q,
            kcache,
            vcache,
            y,
            ..
        } => (vec![q, kcache, vcache, "attn_mask"], vec![y]),
        PlanOp::SwiGlu { gate, up, y, .. } => (vec![gate, up], vec![y]),
        PlanOp::Add { a, b, y, .. } => (vec![a, b], vec![y]),
        PlanOp::Mix { x, matrix, y, .. } => (vec![x, matrix], vec![y]),
        PlanOp::Send { x, .. } => (vec![x], vec![]),
        PlanOp::Recv { y, .. } => (vec![], vec![y]),
    }
}

/// Bytes of weight `name` in `plan` (0 if unknown).
fn weight_bytes(plan: &Plan, name: &str) -> u64 {
    plan.weights
        .get(name)
        .map_or(0, |m| m.storage_bits().div_ceil(8))
}

/// The cuts that minimise the largest chip's weight bytes: `chips`
/// contiguous ranges of `bytes` (one entry per block, each range at least
/// one block), the last chip's load counting `head` too. Ties go to the
/// earliest cut, so the split is deterministic.
pub fn balance(bytes: &[u64], head: u64, chips: usize) -> Vec<Range<usize>> {
    let n = bytes.len();
    let mut prefix = vec![0u64; n + 1];
    for (i, b) in bytes.iter().enumerate() {
        prefix[i + 1] = prefix[i] + b;
    }
    let sum = |a: usize, b: usize| prefix[b] - prefix[a];
    // best[k][i]: the smallest largest load of `k + 1` chips over blocks
    // `0 .. i`; cut[k][i]: where the last of them starts.
    let mut best = vec![vec![u64::MAX; n + 1]; chips];
    let mut cut = vec![vec![0usize; n + 1]; chips];
    for (i, b) in best[0].iter_mut().enumerate().skip(1) {
        *b = sum(0, i);
    }
    for k in 1..chips {
        for i in k + 1..=n {
            for j in k..i {
                if best[k - 1][j] == u64::MAX {
                    continue;
                }
                let extra = if k + 1 == chips && i == n { head } else { 0 };
                let load = best[k - 1][j].max(sum(j, i) + extra);
                if load < best[k][i] {
                    best[k][i] = load;
                    cut[k][i] = j;
                }
            }
        }
    }
    let mut ranges = Vec::with_capacity(chips);
    let mut end = n;
    for k in (0..chips).rev() {
        let start = if k == 0 { 0 } else { cut[k][end] };
        ranges.push(start..end);
        end = start;
    }
    ranges.reverse();
    ranges
}

/// Splits `plan` (a one-token decode step) into `chips` pipeline stages
/// (see the module doc). One chip gives the plan back as one stage.
pub fn partition(plan: &Plan, chips: u32) -> Result<Vec<Stage>, CodegenError> {
    if chips == 0 {
        return Err(err("partition", "a system needs at least one chip"));
    }
    // Every op's block; ops after the last block are the head's.
    let mut op_block: Vec<Option<u32>> = Vec::with_capacity(plan.ops.len());
    let mut current: Option<u32> = None;
    let mut last_tagged = None;
    for (i, (label, op)) in plan.ops.iter().enumerate() {
        if let PlanOp::Send { .. } | PlanOp::Recv { .. } = op {
            return Err(err(label, "the plan is split already"));
        }
        match block_of(label, op) {
            Some(b) => {
                let next = current.map_or(0, |c| c + 1);
                if current != Some(b) && b != next {
                    return Err(err(
                        label,
                        format!(
                            "belongs to block {b}, after block {current:?}: the blocks must run in order, each once"
                        ),
                    ));
                }
                current = Some(b);
                last_tagged = Some(i);
                op_block.push(Some(b));
            }
            None => match current {
                Some(b) => op_block.push(Some(b)),
                None => {
                    return Err(err(label, "comes before the first block"));
                }
            },
        }
    }
    let blocks = current.map_or(0, |c| c + 1);
    let head_start = last_tagged.map_or(0, |i| i + 1);
    if chips > blocks {
        return Err(err(
            "partition",
            format!("{chips} chips for {blocks} blocks: a pipeline stage holds at least one block"),
        ));
    }
    // Weight bytes per block and of the head.
    let mut block_bytes = vec![0u64; blocks as usize];
    let mut head_bytes = 0u64;
    for (i, (_, op)) in plan.ops.iter().enumerate() {
        if let PlanOp::MatMul { weight, .. } = op {
            let b = weight_bytes(plan, weight);
            match (i >= head_start, op_block[i]) {
                (false, Some(k)) => block_bytes[k as usize] += b,
                _ => head_bytes += b,
            }
        }
    }
    let ranges = balance(&block_bytes, head_bytes, chips as usize);
    let kinds: BTreeMap<&str, BufferKind> = plan
        .buffers
        .iter()
        .map(|b| (b.name.as_str(), b.kind))
        .collect();
    let mut stages: Vec<Stage> = Vec::with_capacity(chips as usize);
    for (k, r) in ranges.iter().enumerate() {
        let head = k + 1 == chips as usize;
        let (lo, hi) = (r.start as u32, r.end as u32);
        let ops: Vec<(String, PlanOp)> = plan
            .ops
            .iter()
            .enumerate()
            .filter(|&(i, _)| {
                if i >= head_start {
                    head
                } else {
                    op_block[i].is_some_and(|b| (lo..hi).contains(&b))
                }
            })
            .map(|(_, o)| o.clone())
            .collect();
        // Scratch read before it is written: what flows in from the
        // stage before (the residual stream).
        let mut written: BTreeSet<&str> = BTreeSet::new();
        let mut live_in: Vec<&str> = Vec::new();
        for (_, op) in &ops {
            let (reads, writes) = reads_writes(op);
            for r in reads {
                if kinds.get(r) == Some(&BufferKind::Scratch)
                    && !written.contains(r)
                    && !live_in.contains(&r)
                {
                    live_in.push(r);
                }
            }
            written.extend(writes);
        }
        let receives = match (k, live_in.as_slice()) {
            (0, []) => None,
            (0, more) => {
                return Err(err(
                    "partition",
                    format!("the first block reads {more:?} before anything writes it"),
                ));
            }
            (_, [one]) => {
                let n = plan
                    .buffers
                    .iter()
                    .find(|b| b.name == *one)
                    .map(|b| b.elements())
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| err("partition", format!("unknown buffer `{one}`")))?;
                Some((one.to_string(), n))
            }
            (_, more) => {
                return Err(err(
                    "partition",
                    format!(
                        "block {lo} reads {} values the blocks before it wrote ({more:?}); a pipeline stage receives one, the residual stream",
                        more.len()
                    ),
                ));
            }
        };
        if let (Some(prev), Some((name, n))) = (stages.last_mut(), &receives) {
            let writes_it = prev
                .plan
                .ops
                .iter()
                .any(|(_, op)| reads_writes(op).1.contains(&name.as_str()));
            if !writes_it {
                return Err(err(
                    "partition",
                    format!(
                        "block {lo} reads `{name}`, which the chip before it (blocks {:?}) does not write",
                        prev.blocks
                    ),
                ));
            }
            prev.plan.ops.push((
                "c2c.send".to_string(),
                PlanOp::Send {
                    x: name.clone(),
                    n: *n,
                    to: k as u32,
                },
            ));
            prev.sends = Some((name.clone(), *n));
        }
        let mut all_ops = Vec::with_capacity(ops.len() + 2);
        if let Some((name, n)) = &receives {
            all_ops.push((
                "c2c.recv".to_string(),
                PlanOp::Recv {
                    y: name.clone(),
                    n: *n,
                    from: k as u32 - 1,
                },
            ));
        }
        all_ops.extend(ops);
        stages.push(Stage {
            chip: k as u32,
            blocks: lo..hi,
            head,
            weight_bytes: block_bytes[r.clone()].iter().sum::<u64>()
                + if head { head_bytes } else { 0 },
            receives,
            sends: None,
            plan: Plan {
                ctx: plan.ctx,
                buffers: Vec::new(),
                weights: BTreeMap::new(),
                ops: all_ops,
            },
        });
    }
    // Each stage keeps the buffers and weights its ops use, in the plan's
    // order.
    for s in &mut stages {
        let mut used: BTreeSet<&str> = BTreeSet::new();
        let mut weights = BTreeMap::new();
        for (_, op) in &s.plan.ops {
            used.extend(op.buffers());
            if let PlanOp::MatMul { weight, .. } = op
                && let Some(w) = plan.weights.get(weight)
            {
                weights.insert(weight.clone(), w.clone());
            }
        }
        s.plan.buffers = plan
            .buffers
            .iter()
            .filter(|b| used.contains(b.name.as_str()))
            .cloned()
            .collect();
        s.plan.weights = weights;
    }
    Ok(stages)
}

/// A system's compiled stages.
#[derive(Debug)]
pub struct SystemCompiled {
    /// The stages, chip by chip.
    pub stages: Vec<Stage>,
    /// Each chip's program.
    pub chips: Vec<Compiled>,
}

impl SystemCompiled {
    /// Predicted cycles of one step of the lockstep system: every chip
    /// starts on cycle 0, the step ends with the last chip's end.
    pub fn cycles(&self) -> u64 {
        self.chips.iter().map(|c| c.built.cycles).max().unwrap_or(0)
    }
}

/// Splits `plan` over `chips` chips of `target` ([`partition`]) and
/// compiles the stages in chip order: stage `k`'s `recv`s are placed on or
/// after the arrival of the vectors stage `k - 1` sends (its `send` cycles
/// plus the link's latency), and checked against the link's receive
/// buffer, so nothing waits on a link that the schedule did not plan.
pub fn compile_system(
    plan: &Plan,
    target: &Target,
    chips: u32,
) -> Result<SystemCompiled, CodegenError> {
    let topology = target
        .system(chips)
        .map_err(|e| err("system", format!("{chips} chips: {e}")))?;
    let stages = partition(plan, chips)?;
    let mut compiled: Vec<Compiled> = Vec::with_capacity(stages.len());
    for s in &stages {
        let mut arrivals: BTreeMap<u32, Vec<Cycle>> = BTreeMap::new();
        if s.receives.is_some() {
            let from = s.chip - 1;
            let latency = topology
                .latency_cycles(from, s.chip)
                .map_err(|e| err("c2c.recv", e.to_string()))?;
            let sent = compiled
                .get(from as usize)
                .and_then(|c| c.sent.get(&s.chip))
                .ok_or_else(|| err("c2c.recv", format!("chip {from} sends nothing")))?;
            arrivals.insert(from, sent.iter().map(|t| t + latency as Cycle).collect());
        }
        let links = Links {
            chip: s.chip,
            topology,
            arrivals,
        };
        let c = compile_stage(&s.plan, target, &links).map_err(|e| match e {
            CodegenError::Alloc(a) => CodegenError::Plan {
                op: format!("chip {} (blocks {:?})", s.chip, s.blocks),
                message: format!("does not fit: {a}"),
            },
            other => CodegenError::Plan {
                op: format!("chip {} (blocks {:?})", s.chip, s.blocks),
                message: other.to_string(),
            },
        })?;
        compiled.push(c);
    }
    Ok(SystemCompiled {
        stages,
        chips: compiled,
    })
}
