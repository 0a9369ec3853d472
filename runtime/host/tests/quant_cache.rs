//! The quantized-model cache end to end on the tiny models: a build that
//! reads its matrices from the cache gives the golden model and matrices a
//! build that quantizes gives, bit for bit (the plain calibrated model, and
//! the stream-rotated one whose golden model mixes the head's input), and
//! the key changes with what the matrices are computed from.

use std::path::{Path, PathBuf};

use q35_host::golden::{BuiltGolden, GoldenRecipe, build_with, weights_hash};
use q35_host::quant_cache::{CacheUse, DEFAULT_MAX_BYTES, QuantCache};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn recipe(toml: &Path, calib_ctx: usize) -> GoldenRecipe {
    GoldenRecipe {
        model_toml: toml.to_path_buf(),
        calib: Some(root().join("tests/data/calib_en.txt")),
        calib_ctx,
        calib_samples: 16,
        positions: 16,
        threads: 2,
    }
}

fn same(a: &BuiltGolden, b: &BuiltGolden) {
    assert_eq!(weights_hash(&a.golden), weights_hash(&b.golden));
    assert_eq!(a.golden.activation_scales(), b.golden.activation_scales());
    assert_eq!(a.layers.len(), b.layers.len());
    for ((na, ma), (nb, mb)) in a.layers.iter().zip(&b.layers) {
        assert_eq!(na, nb);
        assert_eq!(ma.to_bytes(), mb.to_bytes(), "{na}");
    }
    assert_eq!(
        a.head.as_ref().map(|h| h.to_bytes()),
        b.head.as_ref().map(|h| h.to_bytes())
    );
}

#[test]
fn a_hit_is_the_quantized_model_bit_for_bit() {
    for toml in [
        root().join("examples/tiny.toml"),
        root().join("tests/lit/backend/Inputs/tiny-rotated.toml"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = QuantCache::at(dir.path(), DEFAULT_MAX_BYTES);
        let r = recipe(&toml, 128);
        let quiet = &q35_quant::progress::silent;
        let none = build_with(&r, None, quiet).expect("quantized");
        assert_eq!(none.cache, CacheUse::Off);
        let stored = build_with(&r, Some(&cache), quiet).expect("stored");
        let entry = match &stored.cache {
            CacheUse::Stored(p) => p.clone(),
            other => panic!("{}: {other:?}", toml.display()),
        };
        let hit = build_with(&r, Some(&cache), quiet).expect("hit");
        assert_eq!(hit.cache, CacheUse::Hit(entry.clone()));
        same(&none, &stored);
        same(&none, &hit);
        // Another calibration window quantizes differently: another key.
        let other = build_with(&recipe(&toml, 64), Some(&cache), quiet).expect("other");
        match &other.cache {
            CacheUse::Stored(p) => assert_ne!(p, &entry),
            c => panic!("{c:?}"),
        }
    }
}
