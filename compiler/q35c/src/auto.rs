//! `q35c compile --chips auto` (or `[target] chips = "auto"`,
//! docs/backend.md 8): the fewest chips the model fits, and which split.
//!
//! 1. The module is lowered and its plan taken from shapes alone
//!    (`op_to_plan_shapes`, as a timing-only compile does): placement and
//!    schedule do not depend on weight values, so nothing is quantized.
//! 2. The lower bound is what the shapes need in MEM (`mem_need`) over one
//!    chip's MEM. From there, for each split (blocks, ops), chip counts the
//!    topology wires are tried upwards until
//!    [`q35_codegen::partition::fit`] accepts one: the cut the compile
//!    would make, every chip's buffers and weight images placed, nothing
//!    scheduled.
//! 3. Tokens per second: at batch 1 a token passes every chip in turn, so
//!    a step's cycles are the stages' work plus the link hops, nearly the
//!    same for any chip count. A model whose weights fit one chip's MEM is
//!    cheap to compile, so when more than one candidate fits each is
//!    compiled (with placeholder weights: exact cycles); otherwise only
//!    the choice is, and the others are estimated from it by the
//!    difference in link time.
//! 4. The choice is the fewest chips, then the fewest cycles, then the
//!    block split. If its compile refuses it after all (the kernels' own
//!    scratch is placed only while scheduling, and crowded MEM can leave a
//!    bundle no cycle), the next count of that split is tried and the
//!    table says so.

use std::path::Path;

use anyhow::Context;
use q35_codegen::partition::{
    self, Candidate, Split, SystemOptions, Verdict, choose, search, split_name,
};
use q35_codegen::plan::Plan;
use q35_model::ModelSpec;
use q35_target::Target;

/// Why a candidate's compile refused it, when the refusal is one more
/// chips may lift (the search then goes on from the next count): a
/// kernel's scratch or a stage's buffers did not fit its MEM, or crowded
/// MEM left a bundle no cycle (`SchedError::NoFit` of a stage, as
/// `partition::compile_system_with` words it). Any other error ends the
/// search.
pub fn refusal(error: &str) -> Option<&'static str> {
    if error.contains("does not fit") {
        Some(if error.contains("'s scratch") {
            "kernel scratch"
        } else {
            "MEM"
        })
    } else if error.contains("no schedule: ") {
        Some("no schedule")
    } else {
        None
    }
}

/// One row of the search: a candidate and what is known of its cycles.
#[derive(Debug)]
pub struct Row {
    /// The split, chips and whether they fit.
    pub candidate: Candidate,
    /// Predicted cycles a token, when compiled.
    pub cycles: Option<u64>,
    /// Why the row changed after the search (a compile refused it).
    pub note: Option<String>,
}

/// The search of `--chips auto` and its results.
pub struct Auto {
    plan: Plan,
    opts: SystemOptions,
    target: Target,
    /// The model's name.
    pub model: String,
    /// MEM the shapes need: weights, KV caches, other buffers.
    pub need: (u64, u64, u64),
    /// The lower bound on chips from `need`.
    pub lower: u32,
    /// The candidates tried, in order.
    pub rows: Vec<Row>,
    /// Whether every fitting candidate is compiled (the model is small).
    pub exact_all: bool,
    /// Wall time of the search (and of any compiles of candidates).
    pub seconds: f64,
}

/// A row's split as the table shows it: `ops`, or `ops x4` for
/// tensor-parallel groups of 4.
fn row_name(c: &Candidate) -> String {
    if c.tensor > 1 {
        format!("{} x{}", split_name(c.split), c.tensor)
    } else {
        split_name(c.split).to_string()
    }
}

/// The splits `--split` asks auto to search.
pub fn splits(split: Split) -> Vec<Split> {
    match split {
        Split::Auto => vec![Split::Blocks, Split::Ops],
        s => vec![s],
    }
}

impl Auto {
    /// Lowers `spec`, bounds the chips by MEM and searches every split of
    /// `splits` from there.
    pub fn search(
        spec: &ModelSpec,
        model_path: &Path,
        context: Option<u64>,
        options: q35_mlir::passes::RunOptions,
        splits: &[Split],
        batch: u32,
    ) -> anyhow::Result<Auto> {
        let shown = model_path.display();
        let t0 = std::time::Instant::now();
        let mlir = q35_mlir::create_context()?;
        let module = q35_mlir::lower::compile_lpu(&mlir, spec, context, options)
            .with_context(|| format!("cannot compile {shown} for the LPU"))?;
        let need = q35_mlir::lpu::plan::mem_need(&module.as_operation())
            .map_err(|e| anyhow::anyhow!("cannot compile {shown} for the LPU: {e}"))?
            .batched(batch);
        let (plan, shapes) = q35_mlir::lpu::plan::op_to_plan_shapes(
            &module.as_operation(),
            &q35_mlir::lpu::plan::ShapeOnly,
        )
        .map_err(|e| anyhow::anyhow!("cannot generate code for {shown}: {e}"))?;
        drop(module);
        // A batch's candidates hold every user's KV caches.
        let plan = plan
            .batched(batch)
            .map_err(|e| anyhow::anyhow!("cannot generate code for {shown}: {e}"))?;
        let chip = spec.target.mem_bytes();
        let lower = u32::try_from(need.total().div_ceil(chip).max(1)).unwrap_or(u32::MAX);
        let opts = SystemOptions {
            split: Split::Auto,
            placeholders: shapes,
            timing_only: true,
            max_weight_bytes: None,
            tensor: 1,
        };
        let mut a = Auto {
            plan,
            opts,
            target: spec.target.clone(),
            model: spec.name.clone(),
            need: (need.weight_bytes, need.kv_bytes, need.other_bytes),
            lower,
            rows: Vec::new(),
            exact_all: need.weight_bytes <= chip,
            seconds: 0.0,
        };
        for &s in splits {
            a.extend(s, lower)
                .with_context(|| format!("{shown}: --chips auto"))?;
        }
        let fitting = a
            .rows
            .iter()
            .filter(|r| r.candidate.verdict == Verdict::Fits)
            .count();
        if a.exact_all && fitting > 1 {
            // Every candidate that fits, compiled: exact cycles (and a
            // refusal moves its split on, to a candidate compiled in turn).
            // One alone is the choice, compiled for real next.
            let mut i = 0;
            while i < a.rows.len() {
                if a.rows[i].candidate.verdict == Verdict::Fits && a.rows[i].cycles.is_none() {
                    a.compile_candidate(i)
                        .with_context(|| format!("{shown}: --chips auto"))?;
                }
                i += 1;
            }
        }
        a.seconds = t0.elapsed().as_secs_f64();
        Ok(a)
    }

    /// Searches `split` from `from` chips; the candidates join the rows.
    fn extend(&mut self, split: Split, from: u32) -> anyhow::Result<()> {
        let found = search(
            &self.plan,
            &self.target,
            from,
            &[split],
            &self.opts,
            &mut |_| {},
        )
        .map_err(|e| anyhow::anyhow!("searching the {} split: {e}", split_name(split)))?;
        // One chip is no split: a fitting one ends the search of any split.
        if self
            .rows
            .iter()
            .any(|r| r.candidate.chips == 1 && r.candidate.verdict == Verdict::Fits)
        {
            return Ok(());
        }
        self.rows.extend(found.into_iter().map(|candidate| Row {
            candidate,
            cycles: None,
            note: None,
        }));
        Ok(())
    }

    /// `--tensor auto`: at the chosen count, the same split in
    /// tensor-parallel groups of 2, 4 and 8 chips (those that divide the
    /// count and a node), each checked and compiled with placeholder
    /// weights, and the choice compiled too: exact cycles, so the choice
    /// (the fewest chips, then the fewest cycles) compares them
    /// (docs/backend.md 10).
    pub fn compare_tensor(&mut self) -> anyhow::Result<()> {
        let t0 = std::time::Instant::now();
        let Some(mut i) = self.choice() else {
            return Ok(());
        };
        // The choice's own cycles, compiled (a refusal moves it on).
        while self.rows[i].cycles.is_none() {
            self.compile_candidate(i)?;
            match self.choice() {
                Some(j) => i = j,
                None => return Ok(()),
            }
        }
        let (split, chips) = (self.rows[i].candidate.split, self.rows[i].candidate.chips);
        let per_node = self.target.c2c.chips_per_node.max(1);
        for t in [2u32, 4, 8] {
            if chips < t || !chips.is_multiple_of(t) || t > per_node || !per_node.is_multiple_of(t)
            {
                continue;
            }
            let opts = SystemOptions {
                split,
                tensor: t,
                ..self.opts.clone()
            };
            let candidate = partition::fit(&self.plan, &self.target, chips, split, &opts)
                .map_err(|e| anyhow::anyhow!("checking groups of {t}: {e}"))?;
            let fits = candidate.verdict == Verdict::Fits;
            self.rows.push(Row {
                candidate,
                cycles: None,
                note: None,
            });
            if fits {
                self.compile_candidate(self.rows.len() - 1)?;
            }
        }
        self.seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Compiles row `i` with placeholder weights for its exact cycles; a
    /// refusal marks it and searches its split on.
    fn compile_candidate(&mut self, i: usize) -> anyhow::Result<()> {
        let c = &self.rows[i].candidate;
        let opts = SystemOptions {
            split: c.split,
            tensor: c.tensor,
            ..self.opts.clone()
        };
        let mut cycles = 0u64;
        let r = partition::compile_system_with(
            &self.plan,
            &self.target,
            c.chips,
            &opts,
            &mut |_, c| {
                cycles = cycles.max(c.built.cycles);
                Ok(())
            },
        );
        match r {
            Ok(()) => {
                self.rows[i].cycles = Some(cycles);
                Ok(())
            }
            Err(e) if refusal(&e.to_string()).is_some() => self.refuse(i, &e.to_string()),
            Err(e) => Err(anyhow::anyhow!(
                "compiling the {} split over {} chips: {e}",
                split_name(c.split),
                c.chips
            )),
        }
    }

    /// The row `--chips auto` takes now: the fewest chips, then the fewest
    /// cycles (compiled or estimated), then the block split.
    pub fn choice(&self) -> Option<usize> {
        choose(
            &self
                .rows
                .iter()
                .map(|r| r.candidate.clone())
                .collect::<Vec<_>>(),
            |i| {
                self.cycles_of(i)
                    .map_or(self.rows[i].candidate.link_cycles, |c| c.0)
            },
        )
    }

    /// Row `i`'s cycles a token: compiled (`true`), or estimated from a
    /// compiled row's by the difference in link time (`false`).
    pub fn cycles_of(&self, i: usize) -> Option<(u64, bool)> {
        let row = &self.rows[i];
        if row.candidate.verdict != Verdict::Fits {
            return None;
        }
        if let Some(c) = row.cycles {
            return Some((c, true));
        }
        // (From a compiled row of the same kind: a tensor-parallel group's
        // cycles are not a pipeline's plus its links.)
        let base = self
            .rows
            .iter()
            .find(|r| r.cycles.is_some() && r.candidate.tensor == row.candidate.tensor)?;
        let est = base.cycles? as i64 + row.candidate.link_cycles as i64
            - base.candidate.link_cycles as i64;
        Some((est.max(0) as u64, false))
    }

    /// Records row `i`'s compiled cycles.
    pub fn settle(&mut self, i: usize, cycles: u64) {
        self.rows[i].cycles = Some(cycles);
    }

    /// Row `i` was accepted by the check but its compile refused it
    /// (`why`): marked so, and its split searched on from the next count.
    pub fn refuse(&mut self, i: usize, why: &str) -> anyhow::Result<()> {
        let (split, chips) = (self.rows[i].candidate.split, self.rows[i].candidate.chips);
        self.rows[i].candidate.verdict = Verdict::Refused(why.to_string());
        if self.rows[i].candidate.tensor > 1 {
            // Groups are compared at the pipeline's count only.
            self.rows[i].note = Some(format!(
                "placement accepted it, code generation refused it ({})",
                refusal(why).unwrap_or("see the error")
            ));
            return Ok(());
        }
        self.rows[i].note = Some(format!(
            "placement accepted it, code generation refused it ({}); the next count tried",
            refusal(why).unwrap_or("see the error")
        ));
        let before = self.rows.len();
        self.extend(
            split,
            partition::next_count(chips, self.target.c2c.chips_per_node),
        )?;
        if self.exact_all {
            for j in before..self.rows.len() {
                if self.rows[j].candidate.verdict == Verdict::Fits {
                    self.compile_candidate(j)?;
                }
            }
        }
        Ok(())
    }

    /// The table `--chips auto` prints on stderr: the bound, every
    /// candidate tried and the choice.
    pub fn table(&self) -> String {
        let t = &self.target;
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        let clock = t.clock_mhz * 1e6;
        let mut s = format!(
            "--chips auto: {} needs {} bytes of MEM ({} of weights, {} of KV cache, {} of other buffers): at least {} {} chip{} of {} bytes\n",
            self.model,
            self.need.0 + self.need.1 + self.need.2,
            self.need.0,
            self.need.1,
            self.need.2,
            self.lower,
            t.name,
            if self.lower == 1 { "" } else { "s" },
            t.mem_bytes()
        );
        s.push_str(&format!(
            "  {:<9} {:>5}  {:>12}  {:>12}  {:<4} {:>12} {:>10}  {}\n",
            "split", "chips", "chip load", "placed MEM", "fits", "cycles/tok", "tokens/s", "cycles"
        ));
        let choice = self.choice();
        for (i, r) in self.rows.iter().enumerate() {
            let c = &r.candidate;
            let (load, placed) = match &c.verdict {
                Verdict::NotApplicable(_) => ("-".to_string(), "-".to_string()),
                Verdict::DoesNotFit { .. } | Verdict::Refused(_) => {
                    (mb(c.largest_load), "-".to_string())
                }
                Verdict::Fits => (mb(c.largest_load), mb(c.largest_placed)),
            };
            let fits = match &c.verdict {
                Verdict::Fits => "yes",
                Verdict::DoesNotFit { .. } | Verdict::Refused(_) => "no",
                Verdict::NotApplicable(_) => "n/a",
            };
            let (cyc, tps, kind) = match self.cycles_of(i) {
                Some((n, exact)) => (
                    n.to_string(),
                    format!("{:.1}", clock / n.max(1) as f64),
                    if exact {
                        "compiled".to_string()
                    } else {
                        "estimate".to_string()
                    },
                ),
                None if c.verdict == Verdict::Fits => {
                    ("?".into(), "?".into(), "not compiled".into())
                }
                None => (String::new(), String::new(), String::new()),
            };
            let why = c
                .verdict
                .why_not()
                .map_or(String::new(), |w| format!(": {w}"));
            s.push_str(&format!(
                "{} {:<9} {:>5}  {:>12}  {:>12}  {:<4} {:>12} {:>10}  {}{}{}\n",
                if choice == Some(i) { "*" } else { " " },
                row_name(c),
                c.chips,
                load,
                placed,
                fits,
                cyc,
                tps,
                kind,
                why,
                r.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
            ));
        }
        match choice {
            Some(i) => {
                let c = &self.rows[i].candidate;
                let what = if c.chips == 1 {
                    "1 chip (no split)".to_string()
                } else {
                    format!("{} chips, split {}", c.chips, row_name(c))
                };
                s.push_str(&format!(
                    "--chips auto: {what} (the fewest chips that fit, then the fewest cycles a token); searched in {:.1} s\n",
                    self.seconds
                ));
            }
            None => s.push_str("--chips auto: no candidate fits\n"),
        }
        s.push_str(
            "  chip load: the largest chip's weights and KV caches as cut; placed MEM: the largest chip's buffers and weight images as placed before scheduling. At batch 1 a token passes every chip in turn: its cycles are the stages' work plus the link hops, nearly the same for any count. An estimate is a compiled candidate's cycles plus the difference in link time (hops x link latency + vectors x vector cycles). `ops x4`: the split in tensor-parallel groups of 4 chips (--tensor auto), always compiled.\n",
        );
        s
    }

    /// The same as `--json`'s `auto`.
    pub fn to_json(&self) -> serde_json::Value {
        let clock = self.target.clock_mhz * 1e6;
        let choice = self.choice();
        serde_json::json!({
            "need_bytes": {
                "weights": self.need.0,
                "kv": self.need.1,
                "other": self.need.2,
                "total": self.need.0 + self.need.1 + self.need.2,
            },
            "mem_bytes_chip": self.target.mem_bytes(),
            "lower_bound_chips": self.lower,
            "search_seconds": self.seconds,
            "candidates": self.rows.iter().enumerate().map(|(i, r)| {
                let c = &r.candidate;
                let cycles = self.cycles_of(i);
                serde_json::json!({
                    "split": split_name(c.split),
                    "tensor": c.tensor,
                    "chips": c.chips,
                    "fits": c.verdict == Verdict::Fits,
                    "why_not": c.verdict.why_not(),
                    "note": r.note,
                    "largest_load_bytes": c.largest_load,
                    "largest_placed_bytes": c.largest_placed,
                    "link_cycles": c.link_cycles,
                    "cycles_per_token": cycles.map(|x| x.0),
                    "tokens_per_second": cycles.map(|x| clock / x.0.max(1) as f64),
                    "cycles": cycles.map(|x| if x.1 { "compiled" } else { "estimate" }),
                    "chosen": choice == Some(i),
                })
            }).collect::<Vec<_>>(),
            "chosen": choice.map(|i| serde_json::json!({
                "split": split_name(self.rows[i].candidate.split),
                "tensor": self.rows[i].candidate.tensor,
                "chips": self.rows[i].candidate.chips,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn refusals_more_chips_may_lift_go_on_and_others_stop() {
        assert_eq!(
            refusal("chip 0 (blocks 0..4): does not fit: blk.2.attn's scratch: ..."),
            Some("kernel scratch")
        );
        assert_eq!(
            refusal("chip 3 (block 1 (part)): does not fit: `x` needs 40 words ..."),
            Some("MEM")
        );
        assert_eq!(
            refusal(
                "chip 5 (block 0 (part)): no schedule: blk.0.attn_q: no cycle from 8549 to 74086 fits the bundle (the bundle meets itself: mem.w3 busy twice at local cycle 98)"
            ),
            Some("no schedule")
        );
        // A kernel asking the impossible is a compiler bug, not a count.
        assert_eq!(
            refusal("chip 1 (block 0): blk.0.ffn: a value read upstream of its producer"),
            None
        );
    }
}
