//! The text rendering of `q35c quant-report`: a per-tensor table (one
//! column per scheme), a whole-model table (one row per scheme) and the
//! reference perplexity line.

use std::io::Write;

use q35_quant::model::TensorReport;

use super::summary::SchemeSummary;
use super::{Inputs, Measured, QuantReportArgs, eval_source, head_name};

/// Writes the whole text report.
pub(super) fn write(
    out: &mut impl Write,
    args: &QuantReportArgs,
    inputs: &Inputs,
    measured: &Measured,
) -> std::io::Result<()> {
    let summaries = &measured.summaries;
    writeln!(
        out,
        "{}: group {}, calibration {}; per tensor: rel. RMSE / rel. layer-output error",
        inputs.loaded.name,
        super::groups_text(inputs.group, &inputs.methods),
        inputs.calib_source
    )?;
    write_tensor_table(out, summaries)?;
    writeln!(out)?;
    write_scheme_table(out, summaries)?;
    write_reference_line(out, args, summaries)
}

/// One row per tensor, one `rel RMSE/out error` column per scheme (`f32`
/// where the scheme left the tensor unquantized).
fn write_tensor_table(out: &mut impl Write, summaries: &[SchemeSummary]) -> std::io::Result<()> {
    write!(out, "{:<24} {:>12}", "tensor", "shape")?;
    for s in summaries {
        write!(out, " {:>17}", s.policy.blocks.as_str())?;
    }
    writeln!(out)?;
    for row in tensor_rows(summaries) {
        write!(
            out,
            "{:<24} {:>12}",
            row.name,
            format!("{}x{}", row.rows, row.cols)
        )?;
        for s in summaries {
            match s.tensors.iter().find(|t| t.name == row.name) {
                Some(t) => write!(
                    out,
                    " {:>8.4}/{:<8}",
                    t.rel_rmse,
                    optional_4(t.output_error)
                )?,
                None => write!(out, " {:>17}", "f32")?,
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

/// The table's rows: the i-th tensor of the first scheme that has an i-th.
fn tensor_rows(summaries: &[SchemeSummary]) -> Vec<&TensorReport> {
    let mut rows = Vec::new();
    for s in summaries {
        rows.extend(s.tensors.iter().skip(rows.len()));
    }
    rows
}

/// One row per scheme: bits per weight, whole-model rel. RMSE, mean
/// layer-output error, largest accumulator bound, and with `--eval`
/// perplexity, mean KLD and top-1 agreement.
fn write_scheme_table(out: &mut impl Write, summaries: &[SchemeSummary]) -> std::io::Result<()> {
    write!(
        out,
        "{:<16} {:<16} {:>8} {:>9} {:>10} {:>11}",
        "scheme", "lm head", "bpw", "rel RMSE", "out error", "max |acc|"
    )?;
    if summaries.iter().any(|s| s.eval.is_some()) {
        write!(out, " {:>10} {:>9} {:>7}", "ppl", "KLD", "top-1")?;
    }
    writeln!(out)?;
    for s in summaries {
        write!(
            out,
            "{:<16} {:<16} {:>8.4} {:>9.4} {:>10} {:>11}",
            s.policy.blocks.as_str(),
            head_name(&s.policy),
            s.bits_per_weight(),
            s.rel_rmse,
            optional_4(s.mean_output_error),
            s.max_accumulator
        )?;
        if let Some(e) = &s.eval {
            write!(
                out,
                " {:>10.4} {:>9.5} {:>7.4}",
                e.ppl, e.mean_kld, e.top1_agreement
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// With `--eval`: the f32 reference's perplexity and the windows scored.
fn write_reference_line(
    out: &mut impl Write,
    args: &QuantReportArgs,
    summaries: &[SchemeSummary],
) -> std::io::Result<()> {
    let Some(e) = summaries.iter().find_map(|s| s.eval.as_ref()) else {
        return Ok(());
    };
    writeln!(
        out,
        "f32 reference perplexity {:.4} on {} ({} windows of {}, {} positions)",
        e.reference_ppl,
        eval_source(args),
        e.windows,
        e.ctx,
        e.positions
    )
}

/// `value` with 4 decimals, or `-`.
fn optional_4(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |e| format!("{e:.4}"))
}
