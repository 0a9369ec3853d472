//! The `--json` rendering of `q35c quant-report`: one pretty-printed object.
//!
//! The structs below are the output's schema. Their fields are declared in
//! alphabetical order on purpose: the output was first built as a
//! `serde_json::Value`, whose objects sort their keys, and the key order is
//! kept so that output stays byte for byte the same. Numbers are written by
//! serde_json itself (shortest round-trip form for f64), as before.

use std::io::Write;

use q35_contract::golden::ActivationScales;
use q35_quant::model::{EvalReport, Methods, StreamRotation, TensorReport};
use serde::Serialize;

use super::summary::SchemeSummary;
use super::{Inputs, Measured, QuantReportArgs, eval_source, head_name};

/// The whole report.
#[derive(Serialize)]
struct ReportJson<'a> {
    calibration: CalibrationJson<'a>,
    /// `null` without `--eval`.
    evaluation: Option<EvaluationJson>,
    group_size: usize,
    /// The accuracy methods, only when one is on (docs/q35-format.md
    /// section 14).
    #[serde(skip_serializing_if = "Option::is_none")]
    methods: Option<MethodsJson>,
    model: &'a str,
    model_file: String,
    schemes: Vec<SchemeJson<'a>>,
}

/// The accuracy methods of `--act-scales`, `--smooth`, `--scale-search`,
/// `--group-of`, `--rotate-down`, `--rotate-head`, `--rotate-stream`,
/// `--rotate-vo`, `--gptq-span`, `--sequential`, `--asymmetric`.
#[derive(Serialize)]
struct MethodsJson {
    act_scales: &'static str,
    /// `--asymmetric`'s strength, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    asymmetric: Option<f32>,
    /// `KIND=G` group sizes of their own (`--group-of`, or the model's
    /// `group_size_of`).
    group_of: Vec<String>,
    /// `--gptq-span`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    gptq_span: Option<usize>,
    rotate_down: bool,
    /// `--rotate-head`'s matrix, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    rotate_head: Option<String>,
    /// `--rotate-stream`'s matrix, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    rotate_stream: Option<String>,
    rotate_vo: bool,
    scale_search: bool,
    /// `--sequential`'s mode, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    sequential: Option<&'static str>,
    smooth: Option<f32>,
}

/// Where the calibration activations came from.
#[derive(Serialize)]
struct CalibrationJson<'a> {
    samples_per_layer: usize,
    source: &'a str,
    tokens: usize,
}

/// The evaluation text and the f32 reference's perplexity on it.
#[derive(Serialize)]
struct EvaluationJson {
    ctx: usize,
    reference_perplexity: f64,
    source: String,
}

/// One scheme's whole-model figures and its tensors.
#[derive(Serialize)]
struct SchemeJson<'a> {
    bits_per_weight: f64,
    eval: Option<EvalJson>,
    head: &'static str,
    max_accumulator_bound: u64,
    mean_rel_output_error: Option<f64>,
    rel_rmse: f64,
    scheme: &'static str,
    storage_bits: u64,
    tensors: Vec<TensorJson<'a>>,
    weights: u64,
}

/// A scheme's golden forward pass against the f32 reference.
#[derive(Serialize)]
struct EvalJson {
    max_kld: f64,
    mean_kld: f64,
    perplexity: f64,
    positions: usize,
    reference_perplexity: f64,
    top1_agreement: f64,
    windows: usize,
}

/// One quantized matrix.
#[derive(Serialize)]
struct TensorJson<'a> {
    bits_per_weight: f64,
    cols: usize,
    /// Q35 multipliers `[m4, m3]`.
    multipliers: [u8; 2],
    name: &'a str,
    output_samples: usize,
    rel_output_error: Option<f64>,
    rel_rmse: f64,
    rows: usize,
    storage_bits: u64,
}

/// Writes the report as one pretty-printed JSON object and a newline.
pub(super) fn write(
    out: &mut impl Write,
    args: &QuantReportArgs,
    inputs: &Inputs,
    measured: &Measured,
) -> std::io::Result<()> {
    let report = ReportJson {
        calibration: CalibrationJson {
            samples_per_layer: args.samples,
            source: &inputs.calib_source,
            tokens: inputs.calib_tokens.len(),
        },
        evaluation: measured
            .reference_ppl
            .map(|reference_perplexity| EvaluationJson {
                ctx: args.ctx,
                reference_perplexity,
                source: eval_source(args),
            }),
        group_size: inputs.group,
        methods: (inputs.methods != Methods::default()).then(|| MethodsJson {
            act_scales: match inputs.methods.act_scales {
                ActivationScales::PerToken => "token",
                ActivationScales::PerGroup => "group",
            },
            asymmetric: inputs.methods.asymmetric,
            group_of: super::group_of_text(&inputs.methods),
            gptq_span: inputs.methods.gptq_span,
            rotate_down: inputs.methods.rotate_down,
            rotate_head: inputs.methods.rotate_head.map(StreamRotation::name),
            rotate_stream: inputs.methods.rotate_stream.map(StreamRotation::name),
            rotate_vo: inputs.methods.rotate_vo,
            scale_search: inputs.methods.scale_search,
            sequential: inputs.methods.sequential.map(|m| m.name()),
            smooth: inputs.methods.smooth,
        }),
        model: &inputs.loaded.name,
        model_file: args.model.display().to_string(),
        schemes: measured.summaries.iter().map(scheme_json).collect(),
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)
}

fn scheme_json(s: &SchemeSummary) -> SchemeJson<'_> {
    SchemeJson {
        bits_per_weight: s.bits_per_weight(),
        eval: s.eval.as_ref().map(eval_json),
        head: head_name(&s.policy),
        max_accumulator_bound: s.max_accumulator,
        mean_rel_output_error: s.mean_output_error,
        rel_rmse: s.rel_rmse,
        scheme: s.policy.blocks.as_str(),
        storage_bits: s.storage_bits,
        tensors: s.tensors.iter().map(tensor_json).collect(),
        weights: s.weights,
    }
}

fn eval_json(e: &EvalReport) -> EvalJson {
    EvalJson {
        max_kld: e.max_kld,
        mean_kld: e.mean_kld,
        perplexity: e.ppl,
        positions: e.positions,
        reference_perplexity: e.reference_ppl,
        top1_agreement: e.top1_agreement,
        windows: e.windows,
    }
}

fn tensor_json(t: &TensorReport) -> TensorJson<'_> {
    TensorJson {
        bits_per_weight: t.bits_per_weight,
        cols: t.cols,
        multipliers: [t.multipliers.0, t.multipliers.1],
        name: &t.name,
        output_samples: t.output_samples,
        rel_output_error: t.output_error,
        rel_rmse: t.rel_rmse,
        rows: t.rows,
        storage_bits: t.storage_bits,
    }
}
