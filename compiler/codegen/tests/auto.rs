//! The chip-count search of `--chips auto` (`partition::{fit, search,
//! choose}`): on a tiny-shaped model and a target with small slices, the
//! fewest chips the placement check accepts are the fewest the compile
//! accepts (one fewer is refused by both), and the choice is the fewest
//! chips, then the fewest cycles, then whole blocks.

use q35_codegen::partition::{
    Candidate, Split, SystemOptions, Verdict, choose, compile_system_with, fit, search,
};
use q35_codegen::plan::{self, Plan};
use q35_contract::Architecture;
use q35_target::Target;

/// A tiny-shaped model of `blocks` blocks (placeholder weights).
fn tiny(blocks: u32, ctx: u32) -> Plan {
    let arch = Architecture {
        family: "llama".into(),
        blocks,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        ffn: 128,
        vocab: 256,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        context: 128,
    };
    plan::placeholder_plan(&arch, ctx, q35_contract::QuantScheme::Q35, 32).unwrap()
}

/// lpu-v1 with `words` words a slice.
fn small(words: u32) -> Target {
    let mut t = Target::builtin("lpu-v1").unwrap();
    t.mem.words_per_slice = words;
    t.mem.bytes = u64::from(t.mem.slices) * u64::from(words) * u64::from(t.mem.word_bytes);
    t
}

/// Whether the system compiles (`Ok(cycles)`), or why not.
fn compiles(plan: &Plan, target: &Target, chips: u32, split: Split) -> Result<u64, String> {
    let opts = SystemOptions {
        split,
        ..SystemOptions::default()
    };
    let mut cycles = 0;
    compile_system_with(plan, target, chips, &opts, &mut |_, c| {
        cycles = cycles.max(c.built.cycles);
        Ok(())
    })
    .map(|()| cycles)
    .map_err(|e| e.to_string())
}

#[test]
fn search_finds_the_fewest_chips_the_compile_accepts() {
    let plan = tiny(16, 64);
    let target = small(64);
    let opts = SystemOptions::default();
    let mut seen = Vec::new();
    let found = search(
        &plan,
        &target,
        1,
        &[Split::Blocks, Split::Ops],
        &opts,
        &mut |c| seen.push((c.split, c.chips)),
    )
    .unwrap();
    for c in &found {
        eprintln!(
            "{:?} {} {:?} load {} placed {} link {}",
            c.split, c.chips, c.verdict, c.largest_load, c.largest_placed, c.link_cycles
        );
    }
    assert_eq!(
        seen,
        found.iter().map(|c| (c.split, c.chips)).collect::<Vec<_>>()
    );
    // One chip does not fit, so each split is searched from 1 upwards.
    assert!(matches!(found[0].verdict, Verdict::DoesNotFit { .. }));
    for split in [Split::Blocks, Split::Ops] {
        let mine: Vec<&Candidate> = found.iter().filter(|c| c.split == split).collect();
        let counts: Vec<u32> = mine.iter().map(|c| c.chips).collect();
        assert_eq!(counts, (1..=counts.len() as u32).collect::<Vec<_>>());
        let last = mine.last().unwrap();
        assert_eq!(last.verdict, Verdict::Fits, "{split:?}");
        assert!(last.largest_placed <= target.mem_bytes());
        assert!(last.link_cycles > 0);
        // The check places what the compile places first, by the same
        // code: one fewer chip is refused by the compile too.
        let fewer = compiles(&plan, &target, last.chips - 1, split);
        assert!(
            fewer.as_ref().is_err_and(|e| e.contains("does not fit")),
            "{split:?} over {}: {fewer:?}",
            last.chips - 1
        );
        // What it cannot see is the kernels' scratch, placed while they
        // are scheduled: the compile may still refuse the count found, and
        // then says so (what `--chips auto` takes as a cue to search on
        // from the next count, which compiles).
        let mut n = last.chips;
        loop {
            match compiles(&plan, &target, n, split) {
                Ok(cycles) => {
                    assert!(cycles > 0);
                    break;
                }
                Err(e) => {
                    assert!(e.contains("does not fit") && e.contains("scratch"), "{e}");
                    let on = search(&plan, &target, n + 1, &[split], &opts, &mut |_| {}).unwrap();
                    let next = on.last().unwrap();
                    assert_eq!(next.verdict, Verdict::Fits, "{split:?} from {}", n + 1);
                    n = next.chips;
                }
            }
        }
        eprintln!(
            "{split:?}: the check accepts {}, the compile {n}",
            last.chips
        );
    }
    // The finer split needs no more chips than whole blocks.
    let fewest = |s| found.iter().filter(|c| c.split == s).map(|c| c.chips).max();
    assert!(fewest(Split::Ops) <= fewest(Split::Blocks));
}

/// More chips than blocks is no block split at all, and the search stops
/// there rather than trying more.
#[test]
fn block_split_past_the_blocks_is_not_applicable() {
    let plan = tiny(2, 64);
    let target = small(24);
    let found = search(
        &plan,
        &target,
        3,
        &[Split::Blocks],
        &SystemOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        matches!(&found[0].verdict, Verdict::NotApplicable(m) if m.contains("3 chips for 2 blocks")),
        "{:?}",
        found[0].verdict
    );
    // A count the topology does not wire is never tried: past one node,
    // whole nodes.
    let c = fit(&plan, &target, 12, Split::Ops, &SystemOptions::default()).unwrap();
    assert!(matches!(c.verdict, Verdict::NotApplicable(_)));
}

/// A model that fits one chip is one candidate: one chip, no split.
#[test]
fn one_chip_ends_the_search() {
    let plan = tiny(2, 64);
    let target = Target::builtin("lpu-v1").unwrap();
    let found = search(
        &plan,
        &target,
        1,
        &[Split::Blocks, Split::Ops],
        &SystemOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].chips, &found[0].verdict), (1, &Verdict::Fits));
}

#[test]
fn choose_takes_the_fewest_chips_then_cycles_then_blocks() {
    let c = |split, chips, verdict| Candidate {
        split,
        chips,
        verdict,
        largest_load: 0,
        largest_placed: 0,
        link_cycles: 0,
        tensor: 1,
    };
    let no = || Verdict::DoesNotFit {
        chip: 0,
        holds: "block 0".into(),
        message: "full".into(),
    };
    let cands = vec![
        c(Split::Blocks, 2, no()),
        c(Split::Blocks, 3, Verdict::Fits),
        c(Split::Ops, 2, Verdict::Fits),
        c(Split::Ops, 3, Verdict::Fits),
    ];
    // Fewest chips first, whatever the cycles.
    assert_eq!(choose(&cands, |i| [0, 10, 1000, 20][i]), Some(2));
    let cands = vec![
        c(Split::Blocks, 3, Verdict::Fits),
        c(Split::Ops, 3, Verdict::Fits),
    ];
    // Same chips: fewer cycles; a tie goes to whole blocks.
    assert_eq!(choose(&cands, |i| [20, 10][i]), Some(1));
    assert_eq!(choose(&cands, |_| 10), Some(0));
    assert_eq!(
        choose(
            &[c(Split::Ops, 1, Verdict::NotApplicable("x".into()))],
            |_| 0
        ),
        None
    );
}
