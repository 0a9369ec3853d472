//! The quantized-model cache: the quantized matrices of a model, kept on
//! disk under a key that fixes everything they are computed from, so that
//! the next `q35c compile` of the same model (another `--context`,
//! `--chips`, `--prefill`, ...) and `q35sim run --check` skip the
//! calibration and quantization (about 39 s of a SmolLM2 compile on 2
//! cores) and get the same bits.
//!
//! # The key
//!
//! A SHA-256 ([`KeyBuilder`]) over:
//! - the quantizer's build: `Q35_QUANT_SOURCE_HASH`, a hash of every source
//!   file under `runtime/` and the workspace's `Cargo.toml` and
//!   `Cargo.lock` (made by `runtime/host/build.rs`), so a changed quantizer
//!   never reads an older one's entries;
//! - the weights: the GGUF file's bytes, or a synthetic source's seed;
//! - the architecture, the `[quantization]` settings and the methods they
//!   select, the calibration text's bytes, window and sample count.
//!
//! Not in the key, because the quantized matrices do not depend on them:
//! the positions the golden model holds, the target, the thread count
//! (results are the same for any), the model.toml's path and name.
//!
//! # The entry
//!
//! One file per key, `<key>.q35q`, little-endian:
//!
//! ```text
//! magic "Q35QCACH" | version u32 | key [32] | payload length u64 | payload SHA-256 [32] | payload
//! payload: count u32, then per matrix: name length u16, name (its GGUF tensor name),
//!          length u64, the matrix's serialised form (docs/q35-format.md)
//! ```
//!
//! An entry is written to a temporary file beside it and renamed into
//! place, so a reader never sees half of one. A read checks the header,
//! the key, the payload's hash and every matrix (`QuantizedMatrix::from_bytes`):
//! an entry that fails is reported ([`Lookup::Bad`]), recomputed and
//! written again; a cache that cannot be written costs only the next
//! compile's time. Entries are evicted oldest first (by modification time,
//! which a hit refreshes) past [`DEFAULT_MAX_BYTES`] or
//! `Q35_QUANT_CACHE_MAX_MB`.
//!
//! # Where
//!
//! `$Q35_QUANT_CACHE` (a directory, or `off` for no cache), else
//! `$XDG_CACHE_HOME/q35/quant`, else `$HOME/.cache/q35/quant`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use q35_contract::QuantizedMatrix;
use q35_quant::model::QuantizedLayer;
use q35_reference::LinearId;
use sha2::{Digest, Sha256};

/// The environment variable naming the cache directory (`off`: no cache).
pub const ENV_DIR: &str = "Q35_QUANT_CACHE";
/// The environment variable bounding the cache's size, in MiB.
pub const ENV_MAX_MB: &str = "Q35_QUANT_CACHE_MAX_MB";
/// The cache's default bound: a few models' entries (SmolLM2's is 60 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
/// The build's source hash (see the module doc).
pub const SOURCE_HASH: &str = env!("Q35_QUANT_SOURCE_HASH");

const MAGIC: [u8; 8] = *b"Q35QCACH";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 32 + 8 + 32;
const EXTENSION: &str = "q35q";

/// A cache key: the SHA-256 of everything a quantized model is computed
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// The key in hex (the entry's file stem).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Builds a [`Key`]: each part is named and length-prefixed, so no two
/// different sequences of parts hash alike.
#[derive(Debug, Clone)]
pub struct KeyBuilder(Sha256);

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuilder {
    /// A key of this build's quantizer.
    pub fn new() -> KeyBuilder {
        let mut k = KeyBuilder(Sha256::new());
        k.part("q35 quantized model", b"1");
        k.part("source", SOURCE_HASH.as_bytes());
        k
    }

    /// Adds the part `name` with value `bytes`.
    pub fn part(&mut self, name: &str, bytes: &[u8]) -> &mut KeyBuilder {
        for b in [name.as_bytes(), bytes] {
            self.0.update((b.len() as u64).to_le_bytes());
            self.0.update(b);
        }
        self
    }

    /// Adds the part `name` with the bytes of the file at `path`.
    pub fn file(&mut self, name: &str, path: &Path) -> std::io::Result<&mut KeyBuilder> {
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(self.part(name, &h.finalize()))
    }

    /// The key.
    pub fn finish(self) -> Key {
        Key(self.0.finalize().into())
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The entry, its matrices in the order they were stored.
    Hit(Vec<QuantizedLayer>),
    /// No entry for the key.
    Miss,
    /// An entry that cannot be used (truncated, corrupted, another key's):
    /// why, with the file.
    Bad(String),
}

/// What a build did with the cache, for its caller to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// No cache (`Q35_QUANT_CACHE=off`, no home directory, or a model the
    /// cache does not serve).
    Off,
    /// The quantized matrices came from this entry.
    Hit(PathBuf),
    /// They were computed and stored in this entry.
    Stored(PathBuf),
    /// They were computed; storing them failed (why).
    NotStored(String),
    /// An entry was there but could not be used (why); the matrices were
    /// computed and stored again.
    Replaced(String),
}

impl CacheUse {
    /// A warning the caller should print, when the cache misbehaved.
    pub fn warning(&self) -> Option<String> {
        match self {
            CacheUse::NotStored(why) => Some(format!(
                "the quantized model was not cached ({why}); the next compile quantizes again ({ENV_DIR}=off turns the cache off)"
            )),
            CacheUse::Replaced(why) => Some(format!(
                "ignored a quantized-model cache entry: {why}; quantized again and replaced it"
            )),
            _ => None,
        }
    }
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct QuantCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl QuantCache {
    /// The cache the environment names (see the module doc): `None` when
    /// it is `off` or no directory can be found.
    pub fn from_env() -> Option<QuantCache> {
        let dir = match std::env::var_os(ENV_DIR) {
            Some(v) if v == "off" => return None,
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => match std::env::var_os("XDG_CACHE_HOME") {
                Some(x) if !x.is_empty() => PathBuf::from(x).join("q35").join("quant"),
                _ => PathBuf::from(std::env::var_os("HOME")?)
                    .join(".cache")
                    .join("q35")
                    .join("quant"),
            },
        };
        let max_bytes = std::env::var(ENV_MAX_MB)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_MAX_BYTES, |mb| mb.saturating_mul(1 << 20));
        Some(QuantCache { dir, max_bytes })
    }

    /// A cache in `dir` holding at most `max_bytes` of entries.
    pub fn at(dir: impl Into<PathBuf>, max_bytes: u64) -> QuantCache {
        QuantCache {
            dir: dir.into(),
            max_bytes,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry file of `key`.
    pub fn path_of(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", key.hex()))
    }

    /// The entry of `key`; `id_of` names a matrix's layer from its GGUF
    /// tensor name (`None`: not one of the model's, the entry is bad).
    pub fn load(&self, key: &Key, id_of: &dyn Fn(&str) -> Option<LinearId>) -> Lookup {
        let path = self.path_of(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Bad(format!("{}: {e}", path.display())),
        };
        match parse(&bytes, key, id_of) {
            Ok(layers) => {
                // A hit is recent use: eviction goes by modification time.
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Lookup::Hit(layers)
            }
            Err(why) => Lookup::Bad(format!("{}: {why}", path.display())),
        }
    }

    /// Stores `layers` as the entry of `key` (atomically: a temporary file
    /// renamed into place), then evicts the oldest entries past the bound.
    pub fn store(&self, key: &Key, layers: &[QuantizedLayer]) -> Result<PathBuf, String> {
        let path = self.path_of(key);
        let show = |e: std::io::Error, what: &Path| format!("{}: {e}", what.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| show(e, &self.dir))?;
        let bytes = serialise(key, layers)?;
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", key.hex(), std::process::id()));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(show(e, &path));
        }
        self.evict(&path);
        Ok(path)
    }

    /// Removes the oldest entries (never `keep`) while the entries take
    /// more than the bound.
    fn evict(&self, keep: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == EXTENSION))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        // Newest first; the bound keeps a prefix.
        entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
        let mut total = 0u64;
        for (_, len, path) in entries {
            total = total.saturating_add(len);
            if total > self.max_bytes && path != keep {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn serialise(key: &Key, layers: &[QuantizedLayer]) -> Result<Vec<u8>, String> {
    let mut payload = Vec::new();
    let count = u32::try_from(layers.len()).map_err(|_| "too many matrices".to_string())?;
    payload.extend_from_slice(&count.to_le_bytes());
    for l in layers {
        let name = l.id.gguf_name();
        let len = u16::try_from(name.len()).map_err(|_| format!("{name}: name too long"))?;
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(name.as_bytes());
        let m = l.matrix.to_bytes();
        payload.extend_from_slice(&(m.len() as u64).to_le_bytes());
        payload.extend_from_slice(&m);
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

fn parse(
    bytes: &[u8],
    key: &Key,
    id_of: &dyn Fn(&str) -> Option<LinearId>,
) -> Result<Vec<QuantizedLayer>, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "{} bytes, shorter than the {HEADER_BYTES}-byte header (truncated)",
            bytes.len()
        ));
    }
    if bytes[0..8] != MAGIC {
        return Err("bad magic (expected \"Q35QCACH\")".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    if bytes[12..44] != key.0 {
        return Err("the entry's key is not its file name's".into());
    }
    let len = u64::from_le_bytes(bytes[44..52].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() as u64 != len {
        return Err(format!(
            "payload of {} bytes, the header says {len} (truncated)",
            payload.len()
        ));
    }
    if Sha256::digest(payload).as_slice() != &bytes[52..84] {
        return Err("the payload's SHA-256 does not match the header (corrupted)".into());
    }
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = payload
            .get(pos..pos.checked_add(n).ok_or("length overflow")?)
            .ok_or_else(|| format!("payload ends at byte {pos}, inside a matrix"))?;
        pos += n;
        Ok(s)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut layers = Vec::with_capacity(count as usize);
    for i in 0..count {
        let n = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes"));
        let name = std::str::from_utf8(take(usize::from(n))?)
            .map_err(|_| format!("matrix {i}: name is not UTF-8"))?
            .to_string();
        let id = id_of(&name).ok_or_else(|| format!("matrix {i}: {name} is not the model's"))?;
        let m = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let m = usize::try_from(m).map_err(|_| format!("{name}: length {m}"))?;
        let matrix = QuantizedMatrix::from_bytes(take(m)?).map_err(|e| format!("{name}: {e}"))?;
        layers.push(QuantizedLayer { id, matrix });
    }
    if pos != payload.len() {
        return Err(format!(
            "{} bytes after the last matrix",
            payload.len() - pos
        ));
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use q35_contract::{Layout, QuantScheme};
    use q35_reference::LinearKind;

    fn layers() -> Vec<QuantizedLayer> {
        let layout = Layout::new(3, 32, 32).expect("layout");
        let codes: Vec<i8> = (0..96).map(|i| (i % 7) as i8 - 3).collect();
        let scales = vec![f16::from_f32(0.5), f16::from_f32(0.25), f16::ONE];
        let m =
            QuantizedMatrix::from_codes(layout, QuantScheme::Int4, (1, 1), &codes, &scales, None)
                .expect("matrix");
        vec![
            QuantizedLayer {
                id: LinearId {
                    block: Some(0),
                    kind: LinearKind::Q,
                },
                matrix: m.clone(),
            },
            QuantizedLayer {
                id: LinearId {
                    block: None,
                    kind: LinearKind::LmHead,
                },
                matrix: m,
            },
        ]
    }

    fn id_of(name: &str) -> Option<LinearId> {
        layers()
            .into_iter()
            .map(|l| l.id)
            .find(|id| id.gguf_name() == name)
    }

    fn key(s: &str) -> Key {
        let mut k = KeyBuilder::new();
        k.part("test", s.as_bytes());
        k.finish()
    }

    #[test]
    fn keys_differ_by_part_and_by_boundary() {
        assert_ne!(key("a"), key("b"));
        let mut ab = KeyBuilder::new();
        ab.part("x", b"ab").part("y", b"");
        let mut a_b = KeyBuilder::new();
        a_b.part("x", b"a").part("y", b"b");
        assert_ne!(ab.finish(), a_b.finish());
    }

    #[test]
    fn an_entry_reads_back_bit_for_bit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = QuantCache::at(dir.path(), DEFAULT_MAX_BYTES);
        let k = key("model");
        assert!(matches!(cache.load(&k, &id_of), Lookup::Miss));
        let path = cache.store(&k, &layers()).expect("store");
        assert_eq!(path, cache.path_of(&k));
        match cache.load(&k, &id_of) {
            Lookup::Hit(got) => {
                assert_eq!(got.len(), 2);
                for (g, w) in got.iter().zip(layers()) {
                    assert_eq!(g.id, w.id);
                    assert_eq!(g.matrix.to_bytes(), w.matrix.to_bytes());
                }
            }
            other => panic!("{other:?}"),
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_damaged_entry_is_bad_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = QuantCache::at(dir.path(), DEFAULT_MAX_BYTES);
        let k = key("model");
        let path = cache.store(&k, &layers()).expect("store");
        let good = std::fs::read(&path).expect("read");
        let bad = |bytes: &[u8]| {
            std::fs::write(&path, bytes).expect("write");
            match cache.load(&k, &id_of) {
                Lookup::Bad(why) => why,
                other => panic!("{other:?}"),
            }
        };
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(bad(&flipped).contains("corrupted"), "{}", bad(&flipped));
        assert!(bad(&good[..good.len() - 5]).contains("truncated"));
        assert!(bad(&good[..10]).contains("truncated"));
        let mut other = good.clone();
        other[20] ^= 1;
        assert!(bad(&other).contains("key"));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(bad(&magic).contains("magic"));
        // A name the model does not have.
        std::fs::write(&path, &good).expect("write");
        match cache.load(&k, &|_| None) {
            Lookup::Bad(why) => assert!(why.contains("not the model's"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eviction_keeps_the_newest_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = serialise(&key("a"), &layers()).expect("bytes").len() as u64;
        // Room for two entries.
        let cache = QuantCache::at(dir.path(), 2 * one + one / 2);
        let keys: Vec<Key> = ["a", "b", "c"].map(key).to_vec();
        for (i, k) in keys.iter().enumerate() {
            let p = cache.store(k, &layers()).expect("store");
            // Distinct modification times, oldest first.
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options()
                .append(true)
                .open(&p)
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
        }
        // Storing the third put the oldest past the bound.
        assert!(!cache.path_of(&keys[0]).exists());
        assert!(cache.path_of(&keys[1]).exists());
        assert!(cache.path_of(&keys[2]).exists());
    }
}
