//! The pipeline split of a decode step over the chips of a system
//! (docs/backend.md 8): each chip runs a contiguous run of the plan's ops,
//! balanced by weight bytes, as a [`Plan`] of its own joined to its
//! neighbours by [`PlanOp::Send`] and [`PlanOp::Recv`] of the values live
//! across the cut, and [`compile_system`], which compiles the stages in
//! chip order so that every `recv` is scheduled after its vector arrives
//! (and every intermediate chip of a route between nodes forwards it on
//! the cycle it arrives).
//!
//! Two ways to cut ([`Split`]): by whole blocks (the residual stream is
//! the one value crossing a cut), or between any two ops (a chip may hold
//! part of a block: the values live across the cut cross it, and a chip
//! holding none of a value's ops receives and re-sends it). The finer
//! split runs the same ops on the same values in the same order, so it is
//! bit for bit the one-chip step; it is what [`Split::Auto`] takes when a
//! block split does not fit the chips' MEM or there are more chips than
//! blocks. A block's KV caches and the logits stay on one chip (no cut between their
//! first and last use).
//!
//! Which op belongs to which block is read from the names the plan uses:
//! an op of block `b` names a weight, buffer or label `blk.<b>.…` or the
//! caches `kcache_<b>`/`vcache_<b>`; ops naming no block between two
//! blocks go with the earlier one; the ops after the last block (the final
//! norm and the LM head) are the head's.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use q35_target::Target;

use crate::machine::Cycle;
use q35_contract::QuantizedMatrix;

use crate::plan::{BufferKind, CodegenError, Compiled, Links, Plan, PlanOp, compile_stage_with};

/// One chip's part of a split plan.
#[derive(Clone, Debug)]
pub struct Stage {
    /// The chip it runs on (stage `k` on chip `k`).
    pub chip: u32,
    /// The blocks it holds ops of.
    pub blocks: Range<u32>,
    /// The blocks of `blocks` it holds only part of (a finer split).
    pub part: Vec<u32>,
    /// Whether it holds the final norm and the LM head.
    pub head: bool,
    /// Its ops: indices into the unsplit plan's ops.
    pub ops: Range<usize>,
    /// Bytes of its weights (3.5-bit codes, scales and slot masks).
    pub weight_bytes: u64,
    /// Bytes of its KV caches.
    pub kv_bytes: u64,
    /// The values it receives (from chip `chip - 1`), in order: buffer and
    /// elements.
    pub receives: Vec<(String, u32)>,
    /// The values it sends (to chip `chip + 1`), in order.
    pub sends: Vec<(String, u32)>,
    /// Its plan: the stage's ops between its [`PlanOp::Recv`]s and its
    /// [`PlanOp::Send`]s, and only the buffers and weights they use.
    pub plan: Plan,
    /// In a tensor-parallel group (docs/backend.md 10): its slice and the
    /// group's chips (slice 0 the group's lead, which runs every op but the
    /// other slices' rows of the matmuls).
    pub tensor: Option<(u32, u32)>,
}

impl Stage {
    /// `blocks 2..4`, `blocks 3..5 (part of 3)`, `block 3 (part)` and
    /// `+ head`, as the compiler's summary shows a chip.
    pub fn describe(&self) -> String {
        let (a, b) = (self.blocks.start, self.blocks.end);
        let mut s = match b - a {
            0 => String::new(),
            1 if self.part.contains(&a) => format!("block {a} (part)"),
            1 => format!("block {a}"),
            _ if self.part.is_empty() => format!("blocks {a}..{b}"),
            n if self.tensor.is_some() && self.part.len() == n as usize => {
                format!("blocks {a}..{b} (part of each)")
            }
            _ => format!(
                "blocks {a}..{b} (part of {})",
                self.part
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        // A batch's attention split by users: which users' this chip runs.
        let mut users: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for (label, op) in &self.plan.ops {
            if let (PlanOp::Attention { .. }, Some(r)) = (op, op.users()) {
                let e = users.entry(label).or_insert((r.start, r.end));
                e.0 = e.0.min(r.start);
                e.1 = e.1.max(r.end);
            }
        }
        for (label, (a, b)) in users {
            if a > 0 || b < self.plan.users {
                let who = if b - a == 1 {
                    format!("user {a}")
                } else {
                    format!("users {a}..{b}")
                };
                s.push_str(&format!(", {label} of {who}"));
            }
        }
        if self.head {
            s.push_str(if s.is_empty() { "head" } else { " + head" });
        }
        if let Some((slice, of)) = self.tensor {
            s.push_str(&format!(", slice {slice} of {of}"));
        }
        s
    }
}

/// How [`partition`] cuts the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// Whole blocks when that fits (every chip's weights and KV caches
    /// within its MEM, at least one block a chip), else between ops.
    #[default]
    Auto,
    /// Whole blocks, at least one a chip.
    Blocks,
    /// Between any two ops (a chip may hold part of a block).
    Ops,
}

/// A weight's shape, for placeholder weights ([`SystemOptions::placeholders`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightShape {
    /// Rows (outputs).
    pub rows: usize,
    /// Columns (inputs).
    pub cols: usize,
    /// Group size.
    pub group: usize,
    /// Scheme.
    pub scheme: q35_contract::QuantScheme,
}

/// Options of [`compile_system_with`].
#[derive(Clone, Debug, Default)]
pub struct SystemOptions {
    /// How to cut.
    pub split: Split,
    /// Weights the plan does not hold, by name: placeholders of these
    /// shapes ([`crate::plan::placeholder_matrix`]) are made for each stage
    /// as it is compiled and dropped after (a timing-only compile of a
    /// model far larger than the host's memory).
    pub placeholders: BTreeMap<String, WeightShape>,
    /// No weight images in the programs' MEM contents (timing only,
    /// [`crate::program::ProgramBuilder::set_weight_images`]).
    pub timing_only: bool,
    /// With the finer split, weights larger than this are cut by output
    /// rows into pieces of at most this many bytes (whole 320-row tiles),
    /// which may go to different chips (default: 1/32 of a chip's
    /// MEM; one plane's share of a weight's image takes 7 MEM slices of
    /// its hemisphere, so large pieces leave slices part empty, and past
    /// about a quarter of MEM one piece outgrows the slices).
    pub max_weight_bytes: Option<u64>,
    /// Chips of a tensor-parallel group (0 or 1: none): the pipeline is
    /// cut into `chips / tensor` stages, and each stage's matmuls are
    /// split by output rows over its `tensor` chips (docs/backend.md 10).
    pub tensor: u32,
}

fn err(op: &str, message: impl Into<String>) -> CodegenError {
    CodegenError::Plan {
        op: op.to_string(),
        message: message.into(),
    }
}

/// The block a name belongs to: `blk.<b>.…`, `kcache_<b>`, `vcache_<b>`
/// (and a batch's `kcache_<b>.u<user>`).
fn block_of_name(name: &str) -> Option<u32> {
    let name = crate::plan::split_user(name).0;
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
            ..
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

/// Whether buffer `name` (a batch's user cache `kcache_3.u1`, or any
/// other) is one an op serving `users` uses: a user's cache only for its
/// user.
fn serves(users: Option<&Range<u32>>, name: &str) -> bool {
    match (users, crate::plan::split_user(name).1) {
        (Some(r), Some(k)) => r.contains(&k),
        _ => true,
    }
}

/// Bytes of the KV caches a [`PlanOp::KvWrite`] writes (a per-user op's,
/// its users' copies only); 0 for any other op.
fn kv_write_bytes(plan: &Plan, op: &PlanOp) -> u64 {
    let PlanOp::KvWrite {
        kcache,
        vcache,
        users,
        ..
    } = op
    else {
        return 0;
    };
    [kcache, vcache]
        .iter()
        .flat_map(|c| plan.decls(c))
        .filter(|b| serves(users.as_ref(), &b.name))
        .map(|b| b.elements() * u64::from(b.dtype.bytes()))
        .sum()
}

/// The names an op's buffer `name` stands for, as the cut keeps caches
/// together: a per-user op's cache by its users' copies
/// ([`crate::plan::user_cache`]), any other name as it is.
fn cache_names(op: &PlanOp, name: &str) -> Vec<String> {
    match op.users() {
        Some(r) => r
            .clone()
            .map(|k| crate::plan::user_cache(name, k))
            .collect(),
        None => vec![name.to_string()],
    }
}

/// A batched plan with every block's KV write and attention (adjacent, as
/// the plan has them) made one pair per user, in user order: each user's
/// attention reads only its own caches, so the users' pairs are
/// independent and the finer split may cut between them. Every user's
/// ops are the same kernels on the same operands as before, so the step's
/// bits are the same; only the schedule's order differs. A one-user plan
/// is returned as it is.
fn split_users(plan: &Plan) -> Plan {
    if plan.users <= 1 {
        return plan.clone();
    }
    let mut ops = Vec::with_capacity(plan.ops.len() + 2 * plan.users as usize * 128);
    let mut it = plan.ops.iter().peekable();
    while let Some((label, op)) = it.next() {
        if let (
            PlanOp::KvWrite {
                kcache,
                users: None,
                ..
            },
            Some((
                alabel,
                att @ PlanOp::Attention {
                    kcache: ak,
                    users: None,
                    ..
                },
            )),
        ) = (op, it.peek())
            && ak == kcache
        {
            for k in 0..plan.users {
                let mut w = op.clone();
                let mut a = att.clone();
                for o in [&mut w, &mut a] {
                    if let PlanOp::KvWrite { users, .. } | PlanOp::Attention { users, .. } = o {
                        *users = Some(k..k + 1);
                    }
                }
                ops.push((label.clone(), w));
                ops.push((alabel.clone(), a));
            }
            it.next();
            continue;
        }
        ops.push((label.clone(), op.clone()));
    }
    Plan {
        ops,
        ..plan.clone()
    }
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

/// Where a split's weights come from: the plan's own, else placeholders of
/// the shapes [`SystemOptions::placeholders`] gives (one made per shape and
/// cloned into each stage that needs it); a piece of a matmul split by
/// rows is its rows of either.
struct Weights<'a> {
    matrices: &'a BTreeMap<String, QuantizedMatrix>,
    shapes: &'a BTreeMap<String, WeightShape>,
    /// Pieces: name -> (the whole weight, its rows).
    pieces: BTreeMap<String, (String, Range<usize>)>,
    made: RefCell<Vec<(WeightShape, QuantizedMatrix)>>,
}

impl<'a> Weights<'a> {
    fn new(
        matrices: &'a BTreeMap<String, QuantizedMatrix>,
        shapes: &'a BTreeMap<String, WeightShape>,
    ) -> Self {
        Weights {
            matrices,
            shapes,
            pieces: BTreeMap::new(),
            made: RefCell::new(Vec::new()),
        }
    }

    /// The shape of weight `name` (a piece's, its rows of the whole), if a
    /// placeholder.
    fn shape(&self, name: &str) -> Option<WeightShape> {
        match self.pieces.get(name) {
            Some((whole, rows)) => self.shapes.get(whole).map(|s| WeightShape {
                rows: rows.len(),
                ..*s
            }),
            None => self.shapes.get(name).copied(),
        }
    }

    /// `f` of the placeholder of weight `name` (made once per shape), if
    /// it has one.
    fn with_placeholder<T>(
        &self,
        name: &str,
        f: impl FnOnce(&QuantizedMatrix) -> T,
    ) -> Result<Option<T>, CodegenError> {
        let Some(s) = self.shape(name) else {
            return Ok(None);
        };
        if let Some((_, m)) = self.made.borrow().iter().find(|(k, _)| *k == s) {
            return Ok(Some(f(m)));
        }
        let m = crate::plan::placeholder_matrix(s.scheme, s.rows, s.cols, s.group)
            .map_err(|e| err(name, e))?;
        let out = f(&m);
        self.made.borrow_mut().push((s, m));
        Ok(Some(out))
    }

    /// Rows of weight `name`.
    fn rows(&self, name: &str) -> Option<usize> {
        if let Some((_, r)) = self.pieces.get(name) {
            return Some(r.len());
        }
        self.matrices
            .get(name)
            .map(QuantizedMatrix::rows)
            .or_else(|| self.shapes.get(name).map(|s| s.rows))
    }

    /// Bytes of weight `name` (0 if unknown).
    fn bytes(&self, name: &str) -> Result<u64, CodegenError> {
        if self.pieces.contains_key(name) || self.matrices.contains_key(name) {
            if let Some(whole) = self.pieces.get(name).map(|p| &p.0)
                && !self.matrices.contains_key(whole)
            {
                return Ok(self
                    .with_placeholder(name, |m| m.storage_bits().div_ceil(8))?
                    .unwrap_or(0));
            }
            return Ok(self.matrix(name)?.storage_bits().div_ceil(8));
        }
        Ok(self
            .with_placeholder(name, |m| m.storage_bits().div_ceil(8))?
            .unwrap_or(0))
    }

    fn matrix(&self, name: &str) -> Result<QuantizedMatrix, CodegenError> {
        if let Some((whole, rows)) = self.pieces.get(name)
            && let Some(m) = self.matrices.get(whole)
        {
            return m
                .row_range(rows.clone())
                .map_err(|e| err(name, e.to_string()));
        }
        if let Some(m) = self.matrices.get(name) {
            return Ok(m.clone());
        }
        self.with_placeholder(name, QuantizedMatrix::clone)?
            .ok_or_else(|| err(name, "unknown weight"))
    }
}

/// `plan` with every matmul whose weight has more than `max` bytes cut by
/// output rows into pieces of at most that (whole 320-row tiles each, the
/// last piece the rest): piece `{w}.rows{r}` writes rows `r ..` of the
/// same output (`PlanOp::MatMul::row0`). The pieces go into `w`; the plan
/// returned holds no weights (`w` gives them).
fn split_rows(plan: &Plan, w: &mut Weights<'_>, max: u64) -> Result<Plan, CodegenError> {
    let lanes = crate::program::LANES as usize;
    let mut ops = Vec::with_capacity(plan.ops.len());
    for (label, op) in &plan.ops {
        if let PlanOp::MatMul {
            xs,
            scale,
            weight,
            y,
            row0: 0,
        } = op
        {
            let bytes = w.bytes(weight)?;
            let rows = w.rows(weight).unwrap_or(0);
            let tiles = rows.div_ceil(lanes);
            if bytes > max && tiles > 1 {
                let pieces = (bytes.div_ceil(max.max(1)) as usize).min(tiles);
                let per = tiles.div_ceil(pieces) * lanes;
                let mut a = 0;
                while a < rows {
                    let b = (a + per).min(rows);
                    let name = format!("{weight}.rows{a}");
                    w.pieces.insert(name.clone(), (weight.clone(), a..b));
                    ops.push((
                        format!("{label}.rows{a}"),
                        PlanOp::MatMul {
                            xs: xs.clone(),
                            scale: scale.clone(),
                            weight: name,
                            y: y.clone(),
                            row0: a as u32,
                        },
                    ));
                    a = b;
                }
                continue;
            }
        }
        ops.push((label.clone(), op.clone()));
    }
    Ok(Plan {
        ctx: plan.ctx,
        buffers: plan.buffers.clone(),
        weights: BTreeMap::new(),
        ops,
        users: plan.users,
        attend: None,
    })
}

/// The plan's ops by block, and where the head starts.
struct Blocks {
    /// Every op's block (ops after the last block: the last block's).
    of_op: Vec<u32>,
    /// Blocks.
    count: u32,
    /// The first op of the head (the ops after the last block's).
    head_start: usize,
}

fn blocks_of(plan: &Plan) -> Result<Blocks, CodegenError> {
    let mut of_op: Vec<u32> = Vec::with_capacity(plan.ops.len());
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
                of_op.push(b);
            }
            None => match current {
                Some(b) => of_op.push(b),
                None => {
                    return Err(err(label, "comes before the first block"));
                }
            },
        }
    }
    Ok(Blocks {
        of_op,
        count: current.map_or(0, |c| c + 1),
        head_start: last_tagged.map_or(0, |i| i + 1),
    })
}

/// Splits `plan` (a one-token decode step) into `chips` pipeline stages by
/// whole blocks (see the module doc; [`partition_with`] for the finer
/// split). One chip gives the plan back as one stage.
pub fn partition(plan: &Plan, chips: u32) -> Result<Vec<Stage>, CodegenError> {
    partition_with(plan, chips, Split::Blocks, u64::MAX)
}

/// [`partition`] cut as `split` says; [`Split::Auto`] cuts between ops
/// when a block split would put more than `mem_bytes` of weights and KV
/// caches on a chip.
pub fn partition_with(
    plan: &Plan,
    chips: u32,
    split: Split,
    mem_bytes: u64,
) -> Result<Vec<Stage>, CodegenError> {
    let shapes = BTreeMap::new();
    let mut w = Weights::new(&plan.weights, &shapes);
    let (split_plan, mut stages) = cut(plan, chips, split, mem_bytes, None, false, &mut w)?;
    for s in &mut stages {
        s.plan = stage_plan(&split_plan, s, &w)?;
    }
    Ok(stages)
}

/// The buffers `op` reads and writes, every op's (a piece of a matmul
/// split by rows after the first reads its output too: it writes only
/// its rows of it).
fn accesses(plan: &Plan) -> Vec<(Vec<&str>, Vec<&str>)> {
    plan.ops
        .iter()
        .map(|(_, op)| {
            let (mut r, w) = reads_writes(op);
            if let PlanOp::MatMul { y, row0, .. } = op
                && *row0 > 0
            {
                r.push(y.as_str());
            }
            // So does a batch's attention for users after the first: it
            // writes only its users' rows of the output.
            if let PlanOp::Attention {
                y, users: Some(u), ..
            } = op
                && u.start > 0
            {
                r.push(y.as_str());
            }
            (r, w)
        })
        .collect()
}

/// Every op's accesses, by buffer: `(op index, reads, writes)` in op
/// order, so whether a value is live across a cut is a binary search, not
/// a scan of every op (a 576-block model over 576 chips asked it 1,152
/// times over 11,000 ops and 5,700 buffers: minutes of string compares).
struct Liveness<'p> {
    by_buffer: std::collections::HashMap<&'p str, Vec<(usize, bool, bool)>>,
}

impl<'p> Liveness<'p> {
    fn new(acc: &[(Vec<&'p str>, Vec<&'p str>)]) -> Liveness<'p> {
        let mut by_buffer: std::collections::HashMap<&'p str, Vec<(usize, bool, bool)>> =
            std::collections::HashMap::new();
        for (i, (r, w)) in acc.iter().enumerate() {
            for &b in r.iter().chain(w) {
                let list = by_buffer.entry(b).or_default();
                if list.last().is_some_and(|l| l.0 == i) {
                    continue;
                }
                list.push((i, r.contains(&b), w.contains(&b)));
            }
        }
        Liveness { by_buffer }
    }

    /// Whether `name` is live across a cut before op `c`: written by an op
    /// before it, and read by the first op at or after it that reads or
    /// writes it.
    fn live(&self, name: &str, c: usize) -> bool {
        let Some(list) = self.by_buffer.get(name) else {
            return false;
        };
        let at = list.partition_point(|a| a.0 < c);
        list[..at].iter().any(|a| a.2) && list.get(at).is_some_and(|a| a.1)
    }
}

/// The scratch (and output) values live across a cut before op `c`: written by an op
/// before it and read by one after it before any op after it writes them;
/// in the plan's buffer order, with their elements.
fn live_at(plan: &Plan, live: &Liveness<'_>, c: usize) -> Result<Vec<(String, u32)>, CodegenError> {
    let mut out = Vec::new();
    // An output too: a batch's LM head may span chips, each passing the
    // logits on with its rows written (the host reads the last chip's).
    for b in plan
        .buffers
        .iter()
        .filter(|b| matches!(b.kind, BufferKind::Scratch | BufferKind::Output))
    {
        if live.live(&b.name, c) {
            let n = u32::try_from(b.elements())
                .map_err(|_| err("partition", format!("`{}` is too large to send", b.name)))?;
            out.push((b.name.clone(), n));
        }
    }
    Ok(out)
}

/// The stages' op ranges and what crosses each cut (plans left empty).
fn cut(
    whole: &Plan,
    chips: u32,
    split: Split,
    mem_bytes: u64,
    max_weight_bytes: Option<u64>,
    users_apart: bool,
    w: &mut Weights<'_>,
) -> Result<(Plan, Vec<Stage>), CodegenError> {
    if chips == 0 {
        return Err(err("partition", "a system needs at least one chip"));
    }
    let bl = blocks_of(whole)?;
    // The block split when it fits; else the finer split, with every
    // weight larger than 1/32 of a chip's MEM cut by rows (one plane's
    // share of such a weight would not fit its MEM slices).
    let fine = match split {
        Split::Blocks => false,
        Split::Ops => true,
        Split::Auto => {
            chips > bl.count || {
                let loads = block_loads(whole, &bl, w)?;
                let (blocks, head) = (&loads.0, loads.1);
                let r = balance(&loads.2, head.0, chips as usize);
                r.iter().enumerate().any(|(k, r)| {
                    let extra = if k + 1 == chips as usize {
                        head.0 + head.1
                    } else {
                        0
                    };
                    blocks[r.clone()].iter().sum::<u64>() + extra > mem_bytes
                })
            }
        }
    };
    let plan = if fine {
        // A batch's attention holds every user's caches (a LLaMA-70B-shaped
        // block at context 2048: 21 MB a user), more than a chip holds
        // beside its kernel scratch from 8 users on: each user gets a KV
        // write and attention of its own, which the cut may put on
        // different chips.
        split_users(&split_rows(
            whole,
            w,
            max_weight_bytes.unwrap_or(mem_bytes / 32),
        )?)
    } else if users_apart {
        // A tensor-parallel group spreads a batch's users over its chips.
        split_users(&split_rows(whole, w, u64::MAX)?)
    } else {
        split_rows(whole, w, u64::MAX)?
    };
    let plan = &plan;
    let bl = blocks_of(plan)?;
    let w = &*w;
    let n = plan.ops.len();
    let kinds: BTreeMap<&str, &crate::plan::BufferDecl> =
        plan.buffers.iter().map(|b| (b.name.as_str(), b)).collect();
    // Every op's weight and KV bytes (a block's caches count at its
    // KV write).
    let mut weights = vec![0u64; n];
    let mut kv = vec![0u64; n];
    for (i, (_, op)) in plan.ops.iter().enumerate() {
        match op {
            PlanOp::MatMul { weight, .. } => weights[i] = w.bytes(weight)?,
            PlanOp::KvWrite { .. } => kv[i] = kv_write_bytes(plan, op),
            _ => {}
        }
    }
    // The first op of each block.
    let mut block_start = vec![n; bl.count as usize + 1];
    for (i, &b) in bl.of_op.iter().enumerate().take(bl.head_start).rev() {
        block_start[b as usize] = i;
    }
    block_start[0] = 0;
    let by_blocks = |ranges: &[Range<usize>]| -> Vec<Range<usize>> {
        ranges
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let end = if k + 1 == ranges.len() {
                    n
                } else {
                    block_start[r.end]
                };
                block_start[r.start]..end
            })
            .collect()
    };
    let op_ranges: Vec<Range<usize>> = if fine {
        by_ops(&weights, &kv, plan, chips)?
    } else {
        if chips > bl.count {
            return Err(err(
                "partition",
                format!(
                    "{chips} chips for {} blocks: a pipeline stage of the block split holds at least one block",
                    bl.count
                ),
            ));
        }
        let mut block_bytes = vec![0u64; bl.count as usize];
        let mut head_bytes = 0u64;
        for i in 0..n {
            if i >= bl.head_start {
                head_bytes += weights[i];
            } else {
                block_bytes[bl.of_op[i] as usize] += weights[i];
            }
        }
        by_blocks(&balance(&block_bytes, head_bytes, chips as usize))
    };
    let acc = accesses(plan);
    // Scratch read before anything writes it.
    let mut written: BTreeSet<&str> = BTreeSet::new();
    for (i, (r, wr)) in acc.iter().enumerate() {
        for b in r {
            if kinds.get(b).is_some_and(|d| d.kind == BufferKind::Scratch) && !written.contains(b) {
                return Err(err(
                    &plan.ops[i].0,
                    format!("reads `{b}` before anything writes it"),
                ));
            }
        }
        written.extend(wr.iter().copied());
    }
    let liveness = Liveness::new(&acc);
    let mut stages: Vec<Stage> = Vec::with_capacity(op_ranges.len());
    for (k, r) in op_ranges.iter().enumerate() {
        let head = r.end > bl.head_start;
        let body = r.start..r.end.min(bl.head_start);
        let blocks = if body.is_empty() {
            bl.count..bl.count
        } else {
            bl.of_op[body.start]..bl.of_op[body.end - 1] + 1
        };
        let mut part = Vec::new();
        if !body.is_empty() {
            if r.start > 0 && bl.of_op[r.start - 1] == blocks.start {
                part.push(blocks.start);
            }
            let last = blocks.end - 1;
            if r.end < bl.head_start && bl.of_op[r.end] == last && !part.contains(&last) {
                part.push(last);
            }
        }
        let receives = if r.start == 0 {
            Vec::new()
        } else {
            live_at(plan, &liveness, r.start)?
        };
        let sends = if r.end == n {
            Vec::new()
        } else {
            live_at(plan, &liveness, r.end)?
        };
        if k > 0 && receives.is_empty() {
            return Err(err(
                "partition",
                format!("chip {k} receives nothing from the chip before it"),
            ));
        }
        stages.push(Stage {
            chip: k as u32,
            blocks,
            part,
            head,
            ops: r.clone(),
            weight_bytes: weights[r.clone()].iter().sum(),
            kv_bytes: kv[r.clone()].iter().sum(),
            receives,
            sends,
            plan: Plan {
                ctx: plan.ctx,
                buffers: Vec::new(),
                weights: BTreeMap::new(),
                ops: Vec::new(),
                users: plan.users,
                attend: None,
            },
            tensor: None,
        });
    }
    Ok((plan.clone(), stages))
}

/// Per block its weight and KV bytes, the head's (weights, KV), and per
/// block its weight bytes alone (what the block split balances).
#[expect(clippy::type_complexity, reason = "three tallies of one walk")]
fn block_loads(
    plan: &Plan,
    bl: &Blocks,
    w: &Weights<'_>,
) -> Result<(Vec<u64>, (u64, u64), Vec<u64>), CodegenError> {
    let mut all = vec![0u64; bl.count as usize];
    let mut weights = vec![0u64; bl.count as usize];
    let mut head = (0u64, 0u64);
    for (i, (_, op)) in plan.ops.iter().enumerate() {
        let (wb, kv) = match op {
            PlanOp::MatMul { weight, .. } => (w.bytes(weight)?, 0),
            PlanOp::KvWrite { kcache, vcache, .. } => (
                0,
                [kcache, vcache]
                    .iter()
                    .flat_map(|c| plan.decls(c))
                    .map(|b| b.elements() * u64::from(b.dtype.bytes()))
                    .sum(),
            ),
            _ => (0, 0),
        };
        if i >= bl.head_start {
            head.0 += wb;
            head.1 += kv;
        } else {
            all[bl.of_op[i] as usize] += wb + kv;
            weights[bl.of_op[i] as usize] += wb;
        }
    }
    Ok((all, head, weights))
}

/// KV cache bytes as they weigh against weights in the fuller hemisphere
/// (scaled as weights are, whose images sit half in each): one user's
/// caches of a block sit in one hemisphere, so they count twice; a batch's
/// users alternate hemispheres (`kv_hemisphere`), so the fuller one holds
/// `ceil(B / 2)` of the `B` users' caches (once for an even batch). Counting
/// a batch's caches twice made a LLaMA-70B-shaped block with 8 users look
/// unsplittable below 64 chips: its attention (168 MB of caches, which stay
/// on one chip) pinned the largest load at 336 MB, so any cut of the rest
/// tied, and the earliest one left 331.7 MB on one chip.
fn kv_load(kv: u64, users: u32) -> u64 {
    let users = u64::from(users.max(1));
    kv * 2 * users.div_ceil(2) / users
}

/// The finer split: `chips` contiguous op ranges minimising the largest
/// chip's weight bytes plus its KV bytes as [`kv_load`] weighs them (its fuller hemisphere's), cut only where no KV cache or output is in
/// use (its first to its last op stay on one chip) and not between an RMSNorm and
/// the quantize of its output (one fused kernel). Ties go to the earliest
/// cut.
fn by_ops(
    weights: &[u64],
    kv: &[u64],
    plan: &Plan,
    chips: u32,
) -> Result<Vec<Range<usize>>, CodegenError> {
    let n = plan.ops.len();
    let mut allowed = vec![true; n + 1];
    let mut span: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    // By the names the ops use (a batch's user caches by their cache's).
    let kinds: BTreeMap<&str, BufferKind> = plan
        .buffers
        .iter()
        .map(|b| (crate::plan::split_user(&b.name).0, b.kind))
        .collect();
    for (i, (_, op)) in plan.ops.iter().enumerate() {
        for b in op.buffers() {
            // A KV cache stays on one chip, and so does an output the host
            // reads (the logits, which the pieces of a split LM head write
            // in parts) for one user; a batch's head may span chips (its
            // 32 users' products beside a 70B head's 115 MB of weights fill
            // any one chip), the logits crossing each cut with the rows
            // written so far.
            let locked = match kinds.get(b) {
                Some(BufferKind::Kv) => true,
                Some(BufferKind::Output) => plan.users <= 1,
                _ => false,
            };
            if locked {
                for name in cache_names(op, b) {
                    let e = span.entry(name).or_insert((i, i));
                    e.1 = i;
                }
            }
        }
        if let (PlanOp::RmsNorm { y, .. }, Some((_, PlanOp::Quantize { x, .. }))) =
            (op, plan.ops.get(i + 1))
            && x == y
        {
            allowed[i + 1] = false;
        }
    }
    for (a, b) in span.values() {
        for c in allowed.iter_mut().take(b + 1).skip(a + 1) {
            *c = false;
        }
    }
    // Cut positions (0 and n always).
    let pos: Vec<usize> = (0..=n)
        .filter(|&c| c == 0 || c == n || allowed[c])
        .collect();
    let m = pos.len() - 1;
    let chips = chips as usize;
    if chips > m {
        return Err(err(
            "partition",
            format!(
                "{chips} chips for a step that can be cut into at most {m} pieces (between ops, a block's KV caches on one chip)"
            ),
        ));
    }
    let mut prefix = vec![0u64; n + 1];
    for i in 0..n {
        // A per-user op's caches are one user's, in one hemisphere.
        let users = plan.ops[i].1.users().map_or(plan.users, |r| r.len() as u32);
        prefix[i + 1] = prefix[i] + weights[i] + kv_load(kv[i], users);
    }
    let sum = |a: usize, b: usize| prefix[pos[b]] - prefix[pos[a]];
    // best[k][j]: the smallest largest load of `k + 1` chips over pieces
    // `0 .. j`; from[k][j]: where the last of them starts.
    let mut best = vec![vec![u64::MAX; m + 1]; chips];
    let mut from = vec![vec![0usize; m + 1]; chips];
    for (j, b) in best[0].iter_mut().enumerate().skip(1) {
        *b = sum(0, j);
    }
    for k in 1..chips {
        let (done, rest) = best.split_at_mut(k);
        let (prev_row, row) = (&done[k - 1], &mut rest[0]);
        for j in k + 1..=m {
            let (mut b, mut f) = (u64::MAX, 0);
            // `prev_row` grows with `i` and the last chip's load shrinks:
            // past the first `i` whose `prev_row` reaches the best so far
            // nothing is better (and ties keep the earliest cut).
            for (i, &prev) in prev_row.iter().enumerate().take(j).skip(k) {
                if prev >= b {
                    break;
                }
                let l = prev.max(sum(i, j));
                if l < b {
                    b = l;
                    f = i;
                }
            }
            row[j] = b;
            from[k][j] = f;
        }
    }
    // A batch's attention holds every user's caches and no cut divides it:
    // it pins the largest load, every cut of the rest then ties, and the
    // earliest piles the rest onto the last chips (a LLaMA-70B-shaped block
    // with 8 users: 168 MB of weights on its last chip, which overflowed at
    // every count up to 64). Among the cuts within that bound the one with
    // the smallest sum of squared loads spreads the rest evenly (the same
    // block: placement fits 6 chips). Only cuts within the bound count, a
    // window of pieces per end, so the pass is the pieces times the chips
    // times the window. One user's splits keep the earliest cut: the pass
    // also lowers the 80-block model's search from 216 chips to 208, but
    // that choice has not been compiled and simulated (docs/backend.md 9).
    if plan.users > 1 {
        let bound = best[chips - 1][m];
        let sq = |l: u64| u128::from(l) * u128::from(l);
        let mut cost = vec![vec![u128::MAX; m + 1]; chips];
        for (j, c) in cost[0].iter_mut().enumerate().skip(1) {
            if sum(0, j) <= bound {
                *c = sq(sum(0, j));
            }
        }
        for k in 1..chips {
            let (done, rest) = cost.split_at_mut(k);
            let (prev_row, row) = (&done[k - 1], &mut rest[0]);
            for j in k + 1..=m {
                let (mut b, mut f) = (u128::MAX, 0);
                // From the latest start back while the last chip stays
                // within the bound; `<=` keeps the earliest start of ties.
                for i in (k..j).rev() {
                    let l = sum(i, j);
                    if l > bound {
                        break;
                    }
                    if prev_row[i] != u128::MAX && prev_row[i] + sq(l) <= b {
                        b = prev_row[i] + sq(l);
                        f = i;
                    }
                }
                row[j] = b;
                from[k][j] = f;
            }
        }
    }
    let mut ranges = Vec::with_capacity(chips);
    let mut end = m;
    for k in (0..chips).rev() {
        let start = if k == 0 { 0 } else { from[k][end] };
        ranges.push(pos[start]..pos[end]);
        end = start;
    }
    ranges.reverse();
    Ok(ranges)
}

/// The op receiving the words `words` (empty: all) of `name` (`n`
/// elements) from chip `from`, with its label.
fn recv_op(name: &str, n: u32, from: u32, words: Vec<Range<u32>>) -> (String, PlanOp) {
    (
        format!("c2c.recv.{name}"),
        PlanOp::Recv {
            y: name.to_string(),
            n,
            from,
            words,
        },
    )
}

/// The op sending the words `words` (empty: all) of `name` (`n`
/// elements) to chip `to`, with its label.
fn send_op(name: &str, n: u32, to: u32, words: Vec<Range<u32>>) -> (String, PlanOp) {
    (
        format!("c2c.send.{name}"),
        PlanOp::Send {
            x: name.to_string(),
            n,
            to,
            words,
        },
    )
}

/// Stage `s`'s plan: its [`PlanOp::Recv`]s, its ops, its [`PlanOp::Send`]s,
/// and the buffers and weights they use, in the plan's order.
fn stage_plan(plan: &Plan, s: &Stage, w: &Weights<'_>) -> Result<Plan, CodegenError> {
    let mut ops: Vec<(String, PlanOp)> = Vec::with_capacity(s.ops.len() + 2);
    for (name, n) in &s.receives {
        ops.push(recv_op(name, *n, s.chip - 1, Vec::new()));
    }
    ops.extend(plan.ops[s.ops.clone()].iter().cloned());
    for (name, n) in &s.sends {
        ops.push(send_op(name, *n, s.chip + 1, Vec::new()));
    }
    plan_of(plan, ops, w, false)
}

/// The plan of the ops `ops` of `plan`: the buffers and weights they use,
/// in the plan's order. A tensor-parallel group's other slices
/// (`worker`) hold no output of the host's: their rows of the logits go
/// to the group's lead, which the host reads.
fn plan_of(
    plan: &Plan,
    ops: Vec<(String, PlanOp)>,
    w: &Weights<'_>,
    worker: bool,
) -> Result<Plan, CodegenError> {
    let mut used: BTreeSet<&str> = BTreeSet::new();
    // Per-user ops' caches, by the users' copies' names.
    let mut users_caches: BTreeSet<String> = BTreeSet::new();
    let mut weights = BTreeMap::new();
    for (_, op) in &ops {
        match op.users() {
            Some(_) => {
                for b in op.buffers() {
                    users_caches.extend(cache_names(op, b));
                }
                used.extend(
                    op.buffers()
                        .into_iter()
                        .filter(|b| !plan.decls(b).any(|d| d.kind == BufferKind::Kv)),
                );
            }
            None => used.extend(op.buffers()),
        }
        if let PlanOp::MatMul { weight, .. } = op
            && !weights.contains_key(weight)
        {
            weights.insert(weight.clone(), w.matrix(weight)?);
        }
    }
    let buffers = plan
        .buffers
        .iter()
        .filter(|b| {
            used.contains(crate::plan::split_user(&b.name).0) || users_caches.contains(&b.name)
        })
        .cloned()
        .map(|mut b| {
            if worker && b.kind == BufferKind::Output {
                b.kind = BufferKind::Scratch;
            }
            b
        })
        .collect();
    Ok(Plan {
        ctx: plan.ctx,
        buffers,
        weights,
        ops,
        users: plan.users,
        attend: None,
    })
}

/// The label of a matmul's op without a row piece's `.rows<r>`.
fn whole_label(label: &str) -> &str {
    match label.rsplit_once(".rows") {
        Some((head, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => label,
    }
}

/// Word ranges `a .. b` of a matmul output `y`'s rows, per user (a
/// batch's buffer has a row of whole words per user).
fn row_words(plan: &Plan, y: &str, a: usize, b: usize) -> Result<Vec<Range<u32>>, CodegenError> {
    let lanes = crate::program::LANES as usize;
    let decl = plan
        .decls(y)
        .next()
        .ok_or_else(|| err(y, "the matmul's output is not declared"))?;
    let users = plan.users.max(1);
    let per_user = crate::plan::words(decl.elements()) / users;
    let (lo, hi) = ((a / lanes) as u32, b.div_ceil(lanes) as u32);
    Ok((0..users)
        .map(|u| u * per_user + lo..u * per_user + hi)
        .collect())
}

/// Word ranges in order with the touching ones joined.
fn coalesce(mut r: Vec<Range<u32>>) -> Vec<Range<u32>> {
    r.sort_by_key(|x| x.start);
    let mut out: Vec<Range<u32>> = Vec::with_capacity(r.len());
    for x in r {
        match out.last_mut() {
            Some(l) if l.end >= x.start => l.end = l.end.max(x.end),
            _ => out.push(x),
        }
    }
    out
}

/// The words of `name` the ops before op `before` wrote: every word (an
/// empty list) once an op wrote the whole buffer, else the rows the
/// matmul pieces and per-user attentions wrote. What crosses into a
/// tensor-parallel group is only those words: the group's other slices
/// write the rest, and a transfer of the whole buffer would land on them.
fn written_words(
    plan: &Plan,
    w: &Weights<'_>,
    name: &str,
    before: usize,
) -> Result<Vec<Range<u32>>, CodegenError> {
    let mut rows = Vec::new();
    for (label, op) in plan.ops[..before].iter().rev() {
        match op {
            PlanOp::MatMul {
                weight, y, row0, ..
            } if y == name => {
                let whole = w
                    .pieces
                    .get(weight)
                    .map_or(weight.as_str(), |p| p.0.as_str());
                let (n, total) = (
                    w.rows(weight).ok_or_else(|| err(label, "unknown weight"))?,
                    w.rows(whole).ok_or_else(|| err(label, "unknown weight"))?,
                );
                if n == total {
                    return Ok(Vec::new());
                }
                let a = *row0 as usize;
                rows.extend(row_words(plan, y, a, a + n)?);
            }
            PlanOp::Attention {
                y, users: Some(u), ..
            } if y == name => {
                let decl = plan
                    .decls(y)
                    .next()
                    .ok_or_else(|| err(label, "the attention's output is not declared"))?;
                let per_user = crate::plan::words(decl.elements()) / plan.users.max(1);
                rows.push(u.start * per_user..u.end * per_user);
            }
            _ => {
                if reads_writes(op).1.contains(&name) {
                    return Ok(Vec::new());
                }
            }
        }
    }
    Ok(coalesce(rows))
}

/// A pipeline stage `g` (group `g.chip`) made a tensor-parallel group of
/// `t` chips, `g.chip * t ..`: every matmul's output rows are cut into `t`
/// slices of whole 320-row tiles (the same cut for each of its row
/// pieces), slice `j` on the group's chip `j`; every other op runs on the
/// group's lead (slice 0) in the plan's order. A slice's chip gets the
/// matmul's input (`xs`, `scale`) from the lead once per value, and sends
/// its rows of the output back before the lead's first use of them (or at
/// the group's end, the logits). The lead receives what the group before
/// sends and sends on what the group after needs. The rows are the same
/// kernels on the same operands (a matmul's rows are independent), so the
/// step is bit for bit the one-chip step.
fn tensor_stages(
    plan: &Plan,
    g: &Stage,
    t: u32,
    lead_rows: bool,
    w: &mut Weights<'_>,
) -> Result<Vec<Stage>, CodegenError> {
    let lanes = crate::program::LANES as usize;
    let base = g.chip * t;
    let n_of = |name: &str| -> Result<u32, CodegenError> {
        let d = plan
            .decls(name)
            .next()
            .ok_or_else(|| err(name, "not declared"))?;
        u32::try_from(d.elements())
            .map_err(|_| err("partition", format!("`{name}` is too large to send")))
    };
    let mut ops: Vec<Vec<(String, PlanOp)>> = vec![Vec::new(); t as usize];
    let mut wbytes = vec![0u64; t as usize];
    let mut kv = vec![0u64; t as usize];
    // Rows of a buffer written on another slice, not yet on the lead:
    // buffer -> slice -> word ranges.
    let mut pending: BTreeMap<String, BTreeMap<u32, Vec<Range<u32>>>> = BTreeMap::new();
    // Who holds a buffer's current value: `(slice, None)` all of it,
    // `(slice, Some(u))` user `u`'s row.
    let mut held: BTreeMap<String, BTreeSet<(u32, Option<u32>)>> = BTreeMap::new();
    let users = plan.users.max(1);
    // A buffer's elements and kind.
    fn decl_of(plan: &Plan, name: &str) -> Option<(u64, BufferKind)> {
        plan.decls(name).next().map(|d| (d.elements(), d.kind))
    }
    // A user's row of a per-token buffer (a batch's `[users, words]`).
    let user_words = |name: &str, u: u32| -> Option<Vec<Range<u32>>> {
        let (elements, _) = decl_of(plan, name)?;
        let per_user = crate::plan::words(elements) / users;
        Some(std::iter::once(u * per_user..(u + 1) * per_user).collect())
    };
    // The host writes inputs to every chip that has them, constants are in
    // each chip's MEM image, and a user's KV caches live with its ops.
    let local = |name: &str| {
        decl_of(plan, name)
            .is_none_or(|d| matches!(d.1, BufferKind::Input | BufferKind::Const | BufferKind::Kv))
    };
    fn xfer(
        ops: &mut [Vec<(String, PlanOp)>],
        base: u32,
        from: u32,
        to: u32,
        name: &str,
        n: u32,
        words: Vec<Range<u32>>,
    ) {
        ops[from as usize].push(send_op(name, n, base + to, words.clone()));
        ops[to as usize].push(recv_op(name, n, base + from, words));
    }
    let gather = |ops: &mut Vec<Vec<(String, PlanOp)>>,
                  pending: &mut BTreeMap<String, BTreeMap<u32, Vec<Range<u32>>>>,
                  name: &str|
     -> Result<(), CodegenError> {
        if let Some(by_slice) = pending.remove(name) {
            let n = n_of(name)?;
            for (slice, words) in by_slice {
                xfer(ops, base, slice, 0, name, n, coalesce(words));
            }
        }
        Ok(())
    };
    for (name, n) in &g.receives {
        ops[0].push(recv_op(
            name,
            *n,
            (g.chip - 1) * t,
            written_words(plan, w, name, g.ops.start)?,
        ));
    }
    for i in g.ops.clone() {
        let (label, op) = &plan.ops[i];
        if let PlanOp::MatMul {
            xs,
            scale,
            weight,
            y,
            row0,
        } = op
        {
            let (whole, rows) = match w.pieces.get(weight) {
                Some((whole, r)) => (whole.clone(), r.clone()),
                None => {
                    let r = w
                        .rows(weight)
                        .ok_or_else(|| err(label, format!("unknown weight `{weight}`")))?;
                    (weight.clone(), 0..r)
                }
            };
            if rows.start != *row0 as usize {
                return Err(err(label, "a row piece's first row is not its op's"));
            }
            let total = w
                .rows(&whole)
                .ok_or_else(|| err(label, format!("unknown weight `{whole}`")))?;
            let tiles = total.div_ceil(lanes);
            // The slices' chips: all of the group's, or (`lead_rows` off)
            // all but the lead's.
            let first = if lead_rows { 0 } else { 1 };
            let count = (t - first) as usize;
            for j in first..t {
                let k = (j - first) as usize;
                let lo = (k * tiles / count) * lanes;
                let hi = ((k + 1) * tiles / count * lanes).min(total);
                let (a, b) = (rows.start.max(lo), rows.end.min(hi));
                if a >= b {
                    continue;
                }
                let (piece, piece_label) = if a == rows.start && b == rows.end {
                    (weight.clone(), label.clone())
                } else {
                    // (A row piece of the pipeline's cut may have this
                    // name with other rows: then the slice's names its end.)
                    let mut name = format!("{whole}.rows{a}");
                    if w.pieces.get(&name).is_some_and(|p| p.1 != (a..b)) {
                        name = format!("{whole}.rows{a}to{b}");
                    }
                    w.pieces.insert(name.clone(), (whole.clone(), a..b));
                    (name, format!("{}.rows{a}", whole_label(label)))
                };
                if j > 0 {
                    for input in [xs, scale] {
                        gather(&mut ops, &mut pending, input)?;
                        if held.entry(input.clone()).or_default().insert((j, None)) {
                            xfer(&mut ops, base, 0, j, input, n_of(input)?, Vec::new());
                        }
                    }
                }
                wbytes[j as usize] += w.bytes(&piece)?;
                ops[j as usize].push((
                    piece_label,
                    PlanOp::MatMul {
                        xs: xs.clone(),
                        scale: scale.clone(),
                        weight: piece,
                        y: y.clone(),
                        row0: a as u32,
                    },
                ));
                held.remove(y);
                if j > 0 {
                    pending
                        .entry(y.clone())
                        .or_default()
                        .entry(j)
                        .or_default()
                        .extend(row_words(plan, y, a, b)?);
                }
            }
            continue;
        }
        // Everything else on the lead, but a batch's per-user KV write
        // and attention (section 9's split by users), which go to the
        // slices with their user's caches: users `j * B / t ..` on slice
        // `j`. An op's operands are on its chip first: rows the
        // slices wrote gathered on the lead, and what a slice reads sent
        // to it from the lead (a per-user op's user row only).
        let user = op.users().map(|r| r.start);
        let j = match (op, user) {
            // Contiguous users a slice: a batch's caches alternate
            // hemispheres by user, so a slice's users share MEM evenly.
            (PlanOp::KvWrite { .. } | PlanOp::Attention { .. }, Some(u)) => {
                (u64::from(u) * u64::from(t) / u64::from(users)) as u32
            }
            _ => 0,
        };
        let (r, wr) = reads_writes(op);
        // (A per-user attention writes only its user's rows of the output:
        // it needs none of the others'.)
        let partial = |b: &str| user.is_some() && wr.contains(&b);
        for b in r.iter().chain(&wr) {
            if local(b) {
                continue;
            }
            if !partial(b) || j == 0 && r.contains(b) {
                gather(&mut ops, &mut pending, b)?;
            }
            if j > 0 && r.contains(b) {
                let h = held.entry(b.to_string()).or_default();
                if !h.contains(&(j, None)) && !user.is_some_and(|u| h.contains(&(j, Some(u)))) {
                    let (key, words) = match user.and_then(|u| Some((u, user_words(b, u)?))) {
                        Some((u, wds)) if users > 1 => (Some(u), wds),
                        _ => (None, Vec::new()),
                    };
                    h.insert((j, key));
                    xfer(&mut ops, base, 0, j, b, n_of(b)?, words);
                }
            }
        }
        kv[j as usize] += kv_write_bytes(plan, op);
        ops[j as usize].push((label.clone(), op.clone()));
        for b in &wr {
            if local(b) {
                continue;
            }
            held.remove(*b);
            if j > 0 {
                let words = match user {
                    Some(u) if users > 1 => user_words(b, u)
                        .ok_or_else(|| err(label, format!("`{b}` is not declared")))?,
                    _ => std::iter::once(0..crate::plan::words(u64::from(n_of(b)?))).collect(),
                };
                pending
                    .entry(b.to_string())
                    .or_default()
                    .entry(j)
                    .or_default()
                    .extend(words);
            }
        }
    }
    // What the next group needs, and the host's outputs, end on the lead.
    let outputs: Vec<String> = pending
        .keys()
        .filter(|n| plan.decls(n).any(|d| d.kind == BufferKind::Output))
        .cloned()
        .collect();
    for name in g.sends.iter().map(|(n, _)| n.clone()).chain(outputs) {
        gather(&mut ops, &mut pending, &name)?;
    }
    for (name, n) in &g.sends {
        ops[0].push(send_op(
            name,
            *n,
            (g.chip + 1) * t,
            written_words(plan, w, name, g.ops.end)?,
        ));
    }
    let mut stages = Vec::with_capacity(t as usize);
    for (j, list) in ops.into_iter().enumerate() {
        let lead = j == 0;
        if !lead && list.is_empty() {
            return Err(err(
                "partition",
                format!(
                    "chip {} (slice {j} of group {}, {}) has no matmul rows to compute: fewer chips a group",
                    base + j as u32,
                    g.chip,
                    g.describe()
                ),
            ));
        }
        let plan = plan_of(plan, list, w, !lead)?;
        let mut part = g.part.clone();
        if !lead {
            part = (g.blocks.start..g.blocks.end).collect();
        }
        stages.push(Stage {
            chip: base + j as u32,
            blocks: g.blocks.clone(),
            part,
            head: lead && g.head,
            ops: g.ops.clone(),
            weight_bytes: wbytes[j],
            kv_bytes: kv[j],
            receives: if lead { g.receives.clone() } else { Vec::new() },
            sends: if lead { g.sends.clone() } else { Vec::new() },
            plan,
            tensor: Some((j as u32, t)),
        });
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

/// Splits `plan` over `chips` chips of `target` by whole blocks and
/// compiles the stages ([`compile_system_with`] with the default options
/// but the block split).
pub fn compile_system(
    plan: &Plan,
    target: &Target,
    chips: u32,
) -> Result<SystemCompiled, CodegenError> {
    let opts = SystemOptions {
        split: Split::Blocks,
        ..SystemOptions::default()
    };
    let mut stages = Vec::new();
    let mut compiled = Vec::new();
    compile_system_with(plan, target, chips, &opts, &mut |s, c| {
        stages.push(s);
        compiled.push(c);
        Ok(())
    })?;
    Ok(SystemCompiled {
        stages,
        chips: compiled,
    })
}

/// The forwarding duties of one chip: per outgoing link, `(cycle, link
/// the vector came in on)`.
type Forwards = BTreeMap<u32, BTreeMap<u16, Vec<(Cycle, u16)>>>;

/// Splits `plan` over `chips` chips of `target` ([`partition_with`]) and
/// compiles the stages in chip order: stage `k`'s `recv`s are placed on or
/// after the arrival of the vectors stage `k - 1` sends (its `send` cycles
/// plus the route's latency), and checked against the link's receive
/// buffer, so nothing waits on a link that the schedule did not plan. A
/// route between nodes (more than one hop, `SystemTopology::route`) is
/// forwarded by each intermediate chip with a `fwd` on the cycle the
/// vector arrives there: a chip after the sender schedules them before its
/// own work; one before it (compiled already) gets them on a link its own
/// program does not use.
/// Each chip's stage and program go to `each` in chip order as soon as no
/// later route can pass through it (a chip of an earlier node), so a
/// system far larger than the host's memory streams through.
pub fn compile_system_with(
    plan: &Plan,
    target: &Target,
    chips: u32,
    opts: &SystemOptions,
    each: &mut dyn FnMut(Stage, Compiled) -> Result<(), CodegenError>,
) -> Result<(), CodegenError> {
    let topology = target
        .system(chips)
        .map_err(|e| err("system", format!("{chips} chips: {e}")))?;
    let per_node = target.c2c.chips_per_node.max(1);
    let t = opts.tensor.max(1);
    if t > 1 && (!chips.is_multiple_of(t) || t > per_node || !per_node.is_multiple_of(t)) {
        return Err(err(
            "partition",
            format!(
                "{chips} chips in tensor-parallel groups of {t}: a group's chips must be linked to each other (a node holds {per_node}), so the group size must divide {per_node} and the chips"
            ),
        ));
    }
    let mut w = Weights::new(&plan.weights, &opts.placeholders);
    let mem = target.mem_bytes();
    let (split_plan, stages) = cut(
        plan,
        chips / t,
        opts.split,
        mem.saturating_mul(u64::from(t)),
        Some(opts.max_weight_bytes.unwrap_or(mem / 32)),
        t > 1,
        &mut w,
    )?;
    let plan = &split_plan;
    let latency = Cycle::from(target.c2c.link_latency_cycles);
    let skew = crate::machine::Mach::new(target).skew;
    let mut forwards: Forwards = BTreeMap::new();
    // Forwards for chips not compiled yet: `(cycle, in link, out link)`.
    let mut ahead: BTreeMap<u32, Vec<(Cycle, u16, u16)>> = BTreeMap::new();
    let mut pending: Vec<(Stage, Compiled)> = Vec::new();
    // What the group before sent this group's lead: its chip and the
    // vectors' `send` cycles.
    let mut prev_sent: Option<(u32, Vec<Cycle>)> = None;
    let flush = |pending: &mut Vec<(Stage, Compiled)>,
                 forwards: &mut Forwards,
                 before: u32,
                 each: &mut dyn FnMut(Stage, Compiled) -> Result<(), CodegenError>|
     -> Result<(), CodegenError> {
        while pending.first().is_some_and(|(s, _)| s.chip < before) {
            let (s, mut c) = pending.remove(0);
            if let Some(f) = forwards.remove(&s.chip) {
                add_forwards(&mut c, s.chip, &f, skew)?;
            }
            each(s, c)?;
        }
        Ok(())
    };
    for g in stages {
        // The group's chips: one pipeline stage, or its tensor-parallel
        // slices (their plans made here).
        let mut group = if t > 1 {
            tensor_stages(plan, &g, t, true, &mut w)?
        } else {
            vec![g.clone()]
        };
        let k = group[0].chip;
        let mut arrivals: BTreeMap<u32, Vec<Cycle>> = BTreeMap::new();
        if !group[0].receives.is_empty() {
            let (from, sent) = prev_sent.take().ok_or_else(|| {
                err(
                    "c2c.recv",
                    format!("the chip before chip {k} sends nothing"),
                )
            })?;
            let route = topology
                .route(from, k)
                .map_err(|e| err("c2c.recv", e.to_string()))?;
            // Every hop after the first leaves an intermediate chip: it
            // forwards each vector on the cycle it arrives. A chip compiled
            // already gets them added to its program (on a link it does
            // not use); a later one schedules them before its own work.
            for (h, pair) in route.windows(2).enumerate() {
                let (into, out) = (pair[0], pair[1]);
                let at = latency * (h as Cycle + 1);
                let (c, link_in, link_out) =
                    (out.from.chip, into.to.link as u16, out.from.link as u16);
                if c < k {
                    forwards
                        .entry(c)
                        .or_default()
                        .entry(link_out)
                        .or_default()
                        .extend(sent.iter().map(|t| (t + at, link_in)));
                } else {
                    ahead
                        .entry(c)
                        .or_default()
                        .extend(sent.iter().map(|t| (t + at, link_in, link_out)));
                }
            }
            let total = latency * route.len() as Cycle;
            arrivals.insert(from, sent.iter().map(|t| t + total).collect());
        }
        if t == 1 {
            group[0].plan = stage_plan(plan, &group[0], &w)?;
        }
        let fwds: BTreeMap<u32, Vec<(Cycle, u16, u16)>> = group
            .iter()
            .map(|s| (s.chip, ahead.remove(&s.chip).unwrap_or_default()))
            .collect();
        let links_of = |group: &[Stage], mailbox: Option<&std::sync::Arc<crate::plan::Mailbox>>| {
            group
                .iter()
                .map(|s| Links {
                    chip: s.chip,
                    topology,
                    arrivals: if s.chip == k {
                        arrivals.clone()
                    } else {
                        BTreeMap::new()
                    },
                    forwards: fwds.get(&s.chip).cloned().unwrap_or_default(),
                    mailbox: mailbox.cloned(),
                })
                .collect::<Vec<Links>>()
        };
        let compile = |s: &Stage, links: &Links| {
            compile_stage_with(&s.plan, target, links, !opts.timing_only)
        };
        let compiled: Vec<Compiled> = if t == 1 {
            let links = links_of(&group, None);
            vec![compile(&group[0], &links[0]).map_err(|e| stage_error(&group[0], e))?]
        } else {
            let new_box = |group: &[Stage]| {
                std::sync::Arc::new(crate::plan::Mailbox::new(group.iter().map(|s| s.chip)))
            };
            let mut mailbox = new_box(&group);
            let mut links = links_of(&group, Some(&mailbox));
            let mut results = compile_group(&group, &links, &mailbox, &compile);
            // The lead's own slice of a matmul can hold the registers and
            // slices its receives of the other slices' rows need past the
            // link's buffer: then the group is cut again with the lead
            // computing no rows (docs/backend.md 10).
            if let Err((_, CodegenError::Sched(crate::sched::SchedError::LateReceive { .. }))) =
                &results
            {
                group = tensor_stages(plan, &g, t, false, &mut w)?;
                mailbox = new_box(&group);
                links = links_of(&group, Some(&mailbox));
                results = compile_group(&group, &links, &mailbox, &compile);
            }
            let results = results.map_err(|(i, e)| stage_error(&group[i], e))?;
            check_group(&group, &results, &mailbox, target)?;
            results
        };
        prev_sent = compiled[0].sent.get(&(k + t)).cloned().map(|v| (k, v));
        for (mut s, c) in group.into_iter().zip(compiled) {
            // The stage's plan is not needed past its compile.
            s.plan.weights.clear();
            pending.push((s, c));
        }
        // No later route passes through a chip of an earlier node.
        flush(&mut pending, &mut forwards, (k / per_node) * per_node, each)?;
    }
    flush(&mut pending, &mut forwards, u32::MAX, each)?;
    if let Some(chip) = forwards.keys().chain(ahead.keys()).next() {
        return Err(err(
            "c2c.fwd",
            format!("a route forwards through chip {chip}, which is not compiled"),
        ));
    }
    Ok(())
}

/// A stage's compile error, naming the chip and what it holds.
fn stage_error(s: &Stage, e: CodegenError) -> CodegenError {
    let what = format!("chip {} ({})", s.chip, s.describe());
    match e {
        CodegenError::Alloc(a) => CodegenError::Plan {
            op: what,
            message: format!(
                "does not fit: {a} (its weights {} bytes, KV caches {} bytes)",
                s.weight_bytes, s.kv_bytes
            ),
        },
        CodegenError::Sched(crate::sched::SchedError::Mem { label, error }) => CodegenError::Plan {
            op: what,
            message: format!(
                "does not fit: {label}'s scratch: {error} (its weights {} bytes, KV caches {} bytes)",
                s.weight_bytes, s.kv_bytes
            ),
        },
        // Crowded MEM can leave a bundle no cycle (its operands'
        // slices busy on the cycles it needs): more chips may
        // schedule, so `--chips auto` reads this as a refusal.
        CodegenError::Sched(e @ crate::sched::SchedError::NoFit { .. }) => CodegenError::Plan {
            op: what,
            message: format!("no schedule: {e}"),
        },
        other => CodegenError::Plan {
            op: what,
            message: other.to_string(),
        },
    }
}

/// Compiles a tensor-parallel group's chips at once, a thread each: a
/// chip's `recv` from another of the group waits in `mb` for the sender
/// to schedule those vectors (docs/backend.md 10). The result of each
/// depends only on its plan and the arrivals, not on the threads' timing.
/// On failure: the first chip (in group order) that failed for a reason
/// of its own (not [`CodegenError::PeerFailed`]), and its error.
fn compile_group(
    group: &[Stage],
    links: &[Links],
    mb: &std::sync::Arc<crate::plan::Mailbox>,
    compile: &(dyn Fn(&Stage, &Links) -> Result<Compiled, CodegenError> + Sync),
) -> Result<Vec<Compiled>, (usize, CodegenError)> {
    let results: Vec<Result<Compiled, CodegenError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .iter()
            .zip(links)
            .map(|(s, l)| {
                let mb = mb.clone();
                std::thread::Builder::new()
                    .name(format!("q35c-chip-{}", s.chip))
                    .stack_size(64 << 20)
                    .spawn_scoped(scope, move || {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            compile(s, l)
                        }))
                        .unwrap_or_else(|_| {
                            Err(err(
                                &format!("chip {}", s.chip),
                                "the compile of this chip panicked",
                            ))
                        });
                        mb.end(s.chip, r.is_err());
                        r
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(err("partition", "a compile thread panicked"))),
                Err(e) => Err(err(
                    "partition",
                    format!("cannot start a compile thread: {e}"),
                )),
            })
            .collect()
    });
    let mut errors: Vec<(usize, CodegenError)> = Vec::new();
    let mut compiled = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(c) => compiled.push(c),
            Err(e) => errors.push((i, e)),
        }
    }
    if errors.is_empty() {
        return Ok(compiled);
    }
    let at = errors
        .iter()
        .position(|(_, e)| !matches!(e, CodegenError::PeerFailed { .. }))
        .unwrap_or(0);
    Err(errors.swap_remove(at))
}

/// Every vector a group's chip sent another was received, none before it
/// arrived and never more than the link's end holds waiting.
fn check_group(
    group: &[Stage],
    compiled: &[Compiled],
    mb: &crate::plan::Mailbox,
    target: &Target,
) -> Result<(), CodegenError> {
    for (s, c) in group.iter().zip(compiled) {
        for (from, taken) in &c.received {
            if !mb.member(*from) {
                continue;
            }
            let all = mb.sent(*from, s.chip);
            if taken.len() != all.len() {
                return Err(err(
                    &format!("chip {}", s.chip),
                    format!(
                        "chip {from} sends {} vectors, this chip receives {}",
                        all.len(),
                        taken.len()
                    ),
                ));
            }
            crate::kernels::c2c::check_arrivals(&all, taken, target.c2c.receive_buffer_vectors)
                .map_err(|m| err(&format!("chip {}: c2c.recv from chip {from}", s.chip), m))?;
        }
        for (to, sent) in &c.sent {
            if mb.member(*to) {
                let got = compiled
                    .iter()
                    .zip(group)
                    .find(|(_, g)| g.chip == *to)
                    .and_then(|(c, _)| c.received.get(&s.chip))
                    .map_or(0, Vec::len);
                if got != sent.len() {
                    return Err(err(
                        &format!("chip {}", s.chip),
                        format!("sends chip {to} {} vectors, it receives {got}", sent.len()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Adds chip `chip`'s forwarding duties to its program: per outgoing link
/// a queue of `fwd`s, each on its vector's arrival cycle (the link's queue
/// must be unused by the chip's own program).
fn add_forwards(
    c: &mut Compiled,
    chip: u32,
    f: &BTreeMap<u16, Vec<(Cycle, u16)>>,
    skew: Cycle,
) -> Result<(), CodegenError> {
    for (&out, list) in f {
        let q = crate::kernels::c2c::link_queue(out)?;
        if c.built.program.queues.contains_key(&q) {
            return Err(err(
                "c2c.fwd",
                format!("chip {chip} forwards a route on link {out}, which its own program uses"),
            ));
        }
        let mut list = list.clone();
        list.sort();
        for pair in list.windows(2) {
            if pair[1].0 == pair[0].0 {
                return Err(err(
                    "c2c.fwd",
                    format!(
                        "chip {chip} forwards two vectors on link {out} on cycle {}",
                        pair[0].0
                    ),
                ));
            }
        }
        let timed: Vec<(Cycle, q35_isa::Instruction)> = list
            .iter()
            .map(|&(t, from)| {
                (
                    t,
                    q35_isa::Instruction::Fwd {
                        link: u32::from(from),
                    },
                )
            })
            .collect();
        let (queue, _) = crate::emit::queue_list(&timed);
        c.built.program.queues.insert(q, queue);
        c.built.debug.push((q.index(), 0, "c2c.fwd".to_string()));
        if let Some(&(last, _)) = list.last() {
            c.built.cycles = c.built.cycles.max((last + 1 + skew).max(0) as u64);
        }
    }
    Ok(())
}

/// Whether a split over a number of chips fits ([`fit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every chip's buffers and weight images are placed in its MEM.
    Fits,
    /// A chip's placement fails: the chip, what it holds, why.
    DoesNotFit {
        /// The chip.
        chip: u32,
        /// What it holds ([`Stage::describe`]).
        holds: String,
        /// The placement's error.
        message: String,
    },
    /// The split cannot be made on this many chips at all (more chips than
    /// blocks for the block split, than places to cut, than the topology
    /// wires); more chips do not help.
    NotApplicable(String),
    /// [`fit`] accepted it but its compile refused it (the kernels' own
    /// scratch, placed only while scheduling): the compile's error.
    Refused(String),
}

impl Verdict {
    /// Why the candidate does not fit (`None` when it does).
    pub fn why_not(&self) -> Option<String> {
        match self {
            Verdict::Fits => None,
            Verdict::DoesNotFit {
                chip,
                holds,
                message,
            } => Some(format!("chip {chip} ({holds}): {message}")),
            Verdict::NotApplicable(m) | Verdict::Refused(m) => Some(m.clone()),
        }
    }
}

/// One split over one number of chips, checked without scheduling
/// ([`fit`]).
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The split ([`Split::Blocks`] or [`Split::Ops`]).
    pub split: Split,
    /// Chips.
    pub chips: u32,
    /// Whether it fits.
    pub verdict: Verdict,
    /// The largest chip's weight and KV bytes (the cut's; 0 when not
    /// applicable).
    pub largest_load: u64,
    /// The largest MEM any checked chip's placement takes (buffers, weight
    /// images and their scratch; [`crate::plan::placed_bytes`]).
    pub largest_placed: u64,
    /// Cycles a token spends on links, estimated: per cut, the route's
    /// hops times the link latency plus the vectors sent times
    /// [`Target::c2c_vector_cycles`].
    pub link_cycles: u64,
    /// Chips of a tensor-parallel group ([`SystemOptions::tensor`]; 1: the
    /// pipeline alone).
    pub tensor: u32,
}

/// Whether `plan` split as `split` ([`Split::Blocks`] or [`Split::Ops`])
/// over `chips` chips of `target` fits, without scheduling anything: the
/// cut [`compile_system_with`] would make, then every stage's buffers and
/// weights placed as its compile starts ([`crate::plan::placed_bytes`]),
/// the most loaded chips (weights plus the KV caches as [`kv_load`] weighs
/// them, as the finer split balances them) first, stopping at the first that does not fit.
/// What it cannot see is the kernels' own scratch, placed while they are
/// scheduled: a candidate that fits here can still fail to compile when
/// MEM is nearly full (the caller then tries the next count).
pub fn fit(
    plan: &Plan,
    target: &Target,
    chips: u32,
    split: Split,
    opts: &SystemOptions,
) -> Result<Candidate, CodegenError> {
    let t = opts.tensor.max(1);
    let mut c = Candidate {
        split,
        chips,
        verdict: Verdict::Fits,
        largest_load: 0,
        largest_placed: 0,
        link_cycles: 0,
        tensor: t,
    };
    let topology = match target.system(chips) {
        Ok(t) => t,
        Err(e) => {
            c.verdict = Verdict::NotApplicable(e.to_string());
            return Ok(c);
        }
    };
    let per_node = target.c2c.chips_per_node.max(1);
    if t > 1 && (!chips.is_multiple_of(t) || t > per_node || !per_node.is_multiple_of(t)) {
        c.verdict = Verdict::NotApplicable(format!(
            "{chips} chips are not whole groups of {t} inside nodes of {per_node}"
        ));
        return Ok(c);
    }
    let mem = target.mem_bytes();
    let mut w = Weights::new(&plan.weights, &opts.placeholders);
    let cut_of = |w: &mut Weights<'_>| {
        if t > 1 {
            cut(
                plan,
                chips / t,
                split,
                mem.saturating_mul(u64::from(t)),
                Some(opts.max_weight_bytes.unwrap_or(mem / 32)),
                true,
                w,
            )
        } else {
            cut(plan, chips, split, mem, opts.max_weight_bytes, false, w)
        }
    };
    let (split_plan, stages) = match cut_of(&mut w) {
        Ok(x) => x,
        // The cut's own refusals (too many chips for the split) do not
        // depend on MEM.
        Err(CodegenError::Plan { op, message }) if op == "partition" => {
            c.verdict = Verdict::NotApplicable(message);
            return Ok(c);
        }
        Err(e) => return Err(e),
    };
    let dtype_bytes: BTreeMap<&str, u64> = split_plan
        .buffers
        .iter()
        .map(|b| (b.name.as_str(), u64::from(b.dtype.bytes())))
        .collect();
    let v = target.c2c_vector_cycles();
    let latency = u64::from(target.c2c.link_latency_cycles);
    // A tensor-parallel system's chips: each group's slices (the links
    // below count between the groups' leads). Each slice is placed while
    // its group's plans exist, and its plan's weights (placeholder copies:
    // all of them together would be the whole model's) dropped before the
    // next group is cut; the results are read below in the same order as
    // a pipeline's.
    let mut placed: Vec<Option<Result<u64, CodegenError>>> = Vec::new();
    let stages: Vec<Stage> = if t > 1 {
        let mut all = Vec::with_capacity(chips as usize);
        for g in &stages {
            match tensor_stages(&split_plan, g, t, true, &mut w) {
                Ok(group) => {
                    for mut s in group {
                        placed.push(Some(crate::plan::placed_bytes(&s.plan, target)));
                        s.plan.weights.clear();
                        all.push(s);
                    }
                }
                Err(CodegenError::Plan { op, message }) if op == "partition" => {
                    c.verdict = Verdict::NotApplicable(message);
                    return Ok(c);
                }
                Err(e) => return Err(e),
            }
        }
        all
    } else {
        stages
    };
    for s in &stages {
        c.largest_load = c.largest_load.max(s.weight_bytes + s.kv_bytes);
        if s.sends.is_empty() {
            continue;
        }
        let hops = topology
            .route(s.chip, s.chip + t)
            .map_err(|e| err("c2c", e.to_string()))?
            .len() as u64;
        let vectors: u64 = s
            .sends
            .iter()
            .map(|(name, n)| {
                u64::from(crate::plan::words(u64::from(*n)))
                    * dtype_bytes.get(name.as_str()).copied().unwrap_or(4)
            })
            .sum();
        c.link_cycles += hops * latency + vectors * v;
    }
    let mut order: Vec<usize> = (0..stages.len()).collect();
    order.sort_by_key(|&i| {
        let s = &stages[i];
        std::cmp::Reverse(s.weight_bytes + kv_load(s.kv_bytes, plan.users))
    });
    for i in order {
        let s = &stages[i];
        let bytes = match placed.get_mut(i).and_then(Option::take) {
            Some(b) => b,
            None => crate::plan::placed_bytes(&stage_plan(&split_plan, s, &w)?, target),
        };
        match bytes {
            Ok(b) => c.largest_placed = c.largest_placed.max(b),
            Err(CodegenError::Alloc(a)) => {
                c.verdict = Verdict::DoesNotFit {
                    chip: s.chip,
                    holds: s.describe(),
                    message: a.to_string(),
                };
                return Ok(c);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(c)
}

/// The chip count a search tries after `n`: every count up to a node,
/// whole nodes past it (the topology wires nothing else).
pub fn next_count(n: u32, per_node: u32) -> u32 {
    let per_node = per_node.max(1);
    if n < per_node {
        n + 1
    } else {
        (n / per_node + 1) * per_node
    }
}

/// The first chip count a search tries: `lower`, rounded up to whole nodes
/// past one node.
fn first_count(lower: u32, per_node: u32) -> u32 {
    let per_node = per_node.max(1);
    let lower = lower.max(1);
    if lower <= per_node {
        lower
    } else {
        lower.div_ceil(per_node) * per_node
    }
}

/// For each split of `splits`, the fewest chips (from `lower`, e.g. what
/// the model's MEM needs, counts the topology wires) on which [`fit`]
/// accepts it: the candidates tried, in order, each split's last the one
/// that fits (or one that is not applicable: more chips cannot help).
/// Counts are tried upwards one by one, so the one found is the fewest by
/// this check, not just some count that fits.
pub fn search(
    plan: &Plan,
    target: &Target,
    lower: u32,
    splits: &[Split],
    opts: &SystemOptions,
    progress: &mut dyn FnMut(&Candidate),
) -> Result<Vec<Candidate>, CodegenError> {
    let per_node = target.c2c.chips_per_node;
    let mut out = Vec::new();
    for &split in splits {
        let mut n = first_count(lower, per_node);
        loop {
            let c = fit(plan, target, n, split, opts)?;
            progress(&c);
            let done = !matches!(c.verdict, Verdict::DoesNotFit { .. });
            let one = n == 1 && c.verdict == Verdict::Fits;
            out.push(c);
            if one {
                // One chip is no split: the other splits would be the same.
                return Ok(out);
            }
            if done {
                break;
            }
            n = next_count(n, per_node);
        }
    }
    Ok(out)
}

/// The candidate `--chips auto` takes among those that fit: the fewest
/// chips, then the fewest cycles a token (`cycles`: predicted or
/// estimated), then the block split (whole blocks a chip). `None` if none
/// fits.
pub fn choose(cands: &[Candidate], cycles: impl Fn(usize) -> u64) -> Option<usize> {
    cands
        .iter()
        .enumerate()
        .filter(|(_, c)| c.verdict == Verdict::Fits)
        .min_by_key(|(i, c)| (c.chips, cycles(*i), c.split != Split::Blocks, *i))
        .map(|(i, _)| i)
}

/// A split's name as the command line spells it.
pub fn split_name(split: Split) -> &'static str {
    match split {
        Split::Auto => "auto",
        Split::Blocks => "blocks",
        Split::Ops => "ops",
    }
}

#[cfg(test)]
mod tests {
    use super::kv_load;

    #[test]
    fn kv_load_counts_the_fuller_hemispheres_users() {
        // One user's caches sit in one hemisphere: twice, like weights'
        // images split over both.
        assert_eq!(kv_load(100, 1), 200);
        // An even batch alternates: half the users on each side.
        assert_eq!(kv_load(100, 2), 100);
        assert_eq!(kv_load(800, 8), 800);
        // Three users: two of them on the fuller side.
        assert_eq!(kv_load(90, 3), 120);
    }
}
