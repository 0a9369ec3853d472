//! The progress hooks: calibration reports each window and quantization
//! each matrix, in order, with the same results as without a callback.

use std::cell::RefCell;

use q35_quant::Progress;
use q35_quant::QuantScheme;
use q35_quant::model::{QuantPipeline, SchemePolicy};
use q35_quant::quantize::QuantOptions;

mod common;

#[test]
fn calibration_and_quantization_report_progress() {
    let model = common::tiny_model(9);
    let toks: Vec<u32> = (0..40u32).map(|i| (i * 91 + 7) % 256).collect();
    let seen: RefCell<Vec<(usize, usize, String)>> = RefCell::new(Vec::new());
    let record = |p: Progress<'_>| {
        if let Progress::Item { done, total, item } = p {
            seen.borrow_mut().push((done, total, item.to_string()));
        }
    };
    let options = QuantOptions { threads: 1 };
    let pipeline =
        QuantPipeline::calibrate_with_progress(&model, &toks, 16, 8, 32, options, &record)
            .expect("calibrates");
    // 40 tokens in windows of 16: three windows.
    let windows: Vec<(usize, usize)> = seen.borrow().iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(windows, vec![(1, 3), (2, 3), (3, 3)]);
    seen.borrow_mut().clear();
    let policy = SchemePolicy::uniform(QuantScheme::Q35);
    let layers = pipeline
        .quantize_with_progress(policy, &record)
        .expect("quantizes");
    let items = seen.borrow().clone();
    assert_eq!(items.len(), layers.len());
    for (i, ((done, total, name), layer)) in items.iter().zip(&layers).enumerate() {
        assert_eq!((*done, *total), (i + 1, layers.len()));
        assert_eq!(name, &layer.id.gguf_name());
    }
    // The callback changes nothing.
    let plain = pipeline.quantize(policy).expect("quantizes");
    assert_eq!(
        plain.iter().map(|l| &l.matrix).collect::<Vec<_>>(),
        layers.iter().map(|l| &l.matrix).collect::<Vec<_>>()
    );
}
