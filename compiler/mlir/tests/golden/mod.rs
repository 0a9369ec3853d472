//! Golden models the interpreter tests (`interp.rs`, `lpu.rs`) hold the
//! compiler's IR to: tiny.toml and SmolLM2, quantized as `q35c eval --quant`
//! quantizes them (the model.toml's scheme and group sizes, per kind too).

use q35_contract::GoldenModel;
use q35_model::ModelSpec;
use q35_quant::golden::from_reference;
use q35_quant::model::{
    Calibration, QuantPipeline, SchemePolicy, model_weights, quantize_model_with,
    rotate_stream_model,
};
use q35_quant::quantize::QuantOptions;
use q35_reference::Model;
use q35_tokenizer::Tokenizer;

use crate::common;

/// examples/tiny.toml.
pub fn tiny_spec() -> ModelSpec {
    q35_model::load(common::root().join("examples/tiny.toml")).unwrap()
}

/// The golden model of tiny.toml (QuantPipeline: covariance calibration on
/// the first 512 bytes of tests/data/calib_en.txt taken as token ids, the
/// model.toml's scheme for every matrix, LM head included).
pub fn tiny_golden(spec: &ModelSpec, positions: usize) -> GoldenModel {
    let model = Model::from_spec(spec, None).unwrap();
    let text = std::fs::read_to_string(common::root().join("tests/data/calib_en.txt")).unwrap();
    let calib: Vec<u32> = text
        .bytes()
        .take(512)
        .map(|b| u32::from(b) % spec.arch.vocab)
        .collect();
    let pipeline = QuantPipeline::calibrate_with(
        &model,
        &calib,
        128,
        16,
        spec.quant.group_size as usize,
        QuantOptions { threads: 2 },
        q35_host::golden::methods(&spec.quant),
        &q35_quant::progress::silent,
    )
    .unwrap();
    let layers = pipeline
        .quantize(SchemePolicy::uniform(spec.quant.scheme))
        .unwrap();
    pipeline.golden(&layers, positions).unwrap()
}

/// SmolLM2's golden model for 8 positions (the model.toml's scheme, importance
/// from one short sentence) and its tokenizer.
pub fn smollm2_golden(spec: &ModelSpec) -> (GoldenModel, Tokenizer) {
    let file = spec.open_gguf().unwrap();
    let model = Model::from_spec(spec, file.as_ref()).unwrap();
    let tokenizer = Tokenizer::from_gguf(file.as_ref().unwrap()).unwrap();
    let calib = tokenizer.encode("The quick brown fox jumps over the lazy dog.", false);
    let methods = q35_host::golden::methods(&spec.quant);
    // The model.toml's stream rotation rewrites the model before it is
    // calibrated and quantized, as the pipeline does.
    let rotated = methods
        .rotate_stream
        .map(|kind| rotate_stream_model(&model, kind).unwrap());
    let model = rotated.as_ref().map_or(&model, |r| &r.model);
    let calib = Calibration::run(model, &calib, 16, 4).unwrap();
    let layers = quantize_model_with(
        model,
        &model_weights(model).unwrap(),
        SchemePolicy::uniform(spec.quant.scheme),
        spec.quant.group_size as usize,
        Some(&calib),
        QuantOptions { threads: 2 },
        &methods,
        &q35_quant::progress::silent,
    )
    .unwrap();
    let golden = from_reference(model, &layers, 8).unwrap();
    let golden = match &rotated {
        Some(r) => golden.with_head_mix(r.head_mix.clone()).unwrap(),
        None => golden,
    };
    (golden, tokenizer)
}
