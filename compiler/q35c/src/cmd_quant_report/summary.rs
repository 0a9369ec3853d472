//! The report's figures for one scheme: a [`TensorReport`] per quantized
//! matrix and the whole-model figures summed from them.

use anyhow::Context;
use q35_contract::semantics::{ACT_MAX, accumulator_bound};
use q35_quant::QuantizedMatrix;
use q35_quant::model::{
    EvalReport, QuantPipeline, QuantizedLayer, SchemePolicy, TensorReport, tensor_report,
};

/// Whole-model figures of one scheme.
pub(super) struct SchemeSummary {
    /// The scheme of the blocks and what the LM head got.
    pub policy: SchemePolicy,
    /// One per quantized matrix, in forward order.
    pub tensors: Vec<TensorReport>,
    /// Storage bits of every quantized matrix (codes, scales, slot masks).
    pub storage_bits: u64,
    /// Weights in every quantized matrix.
    pub weights: u64,
    /// Relative RMSE of all quantized weights pooled:
    /// `sqrt(sum (w - q)^2 / sum w^2)` over every weight of every matrix.
    pub rel_rmse: f64,
    /// The unweighted mean over matrices of the relative layer-output error
    /// (`None` when no matrix had calibration samples).
    pub mean_output_error: Option<f64>,
    /// The largest worst-case |int32 accumulator| of any matrix's matmul.
    pub max_accumulator: u64,
    /// Perplexity, KL divergence and top-1 agreement (`--eval`).
    pub eval: Option<EvalReport>,
}

/// Running sums over the tensor reports of one scheme, in forward order.
#[derive(Default)]
struct Totals {
    storage_bits: u64,
    weights: u64,
    /// `sum (w - q)^2` over every weight.
    sq_err: f64,
    /// `sum w^2` over every weight.
    sq_ref: f64,
    /// Sum of the matrices' relative layer-output errors ...
    output_error_sum: f64,
    /// ... and how many matrices had one.
    output_errors: usize,
    max_accumulator: u64,
}

impl Totals {
    /// Adds one matrix and its report.
    fn add(&mut self, matrix: &QuantizedMatrix, report: &TensorReport) {
        self.storage_bits += report.storage_bits;
        self.weights += (report.rows * report.cols) as u64;
        self.sq_err += report.sq_err;
        self.sq_ref += report.sq_ref;
        if let Some(e) = report.output_error {
            self.output_error_sum += e;
            self.output_errors += 1;
        }
        self.max_accumulator = self.max_accumulator.max(worst_accumulator(matrix));
    }
}

/// The worst-case |int32 accumulator| of `matrix`'s matmul: a group of
/// int8 activations at `ACT_MAX` against the largest integer weight.
fn worst_accumulator(matrix: &QuantizedMatrix) -> u64 {
    accumulator_bound(
        matrix.group_size() as u64,
        ACT_MAX as u64,
        matrix.code_max(),
    )
}

impl SchemeSummary {
    /// Measures every layer of `layers` (quantized by `pipeline` under
    /// `policy`) against its f32 weights and sums the whole-model figures;
    /// `eval` is left empty.
    pub fn new(
        policy: SchemePolicy,
        layers: &[QuantizedLayer],
        pipeline: &QuantPipeline<'_>,
        threads: usize,
    ) -> anyhow::Result<SchemeSummary> {
        let mut totals = Totals::default();
        let mut tensors = Vec::with_capacity(layers.len());
        for l in layers {
            let weights = &pipeline
                .weights()
                .iter()
                .find(|(id, _)| *id == l.id)
                .context("quantized layer without weights")?
                .1;
            let report = tensor_report(
                l.id,
                weights,
                &l.matrix,
                pipeline.calibration().layer(l.id),
                threads,
            )?;
            totals.add(&l.matrix, &report);
            tensors.push(report);
        }
        Ok(SchemeSummary {
            policy,
            tensors,
            storage_bits: totals.storage_bits,
            weights: totals.weights,
            rel_rmse: if totals.sq_ref > 0.0 {
                (totals.sq_err / totals.sq_ref).sqrt()
            } else {
                0.0
            },
            mean_output_error: (totals.output_errors > 0)
                .then(|| totals.output_error_sum / totals.output_errors as f64),
            max_accumulator: totals.max_accumulator,
            eval: None,
        })
    }

    /// Storage bits per weight over every quantized matrix.
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bits as f64 / self.weights.max(1) as f64
    }
}
