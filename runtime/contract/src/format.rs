//! The packed storage of a quantized matrix (docs/q35-format.md, "Layout").
//!
//! A matrix has `rows` outputs and `cols` inputs (the reduction dimension,
//! `y = W x`). The reduction dimension is cut into groups of `group_size`
//! channels; the last group may be shorter and is zero-padded to a multiple
//! of [`CHANNEL_QUANTUM`]. Each (group, row) pair is one *block*: the codes
//! of that row's channels in that group, plus one fp16 scale. Blocks are
//! stored group-major (all rows of group 0, then all rows of group 1, ...),
//! so the weights of one group for a run of consecutive output rows -- what
//! one pass of a `[1 x K] x [K x 320]` systolic tile consumes -- are one
//! contiguous byte range.

use crate::dots;
use crate::pack::{pack_bits, pair_code, sign_extend, split_pair, unpack_bits};
use crate::semantics::{self, ActivationI8, GroupedActivationI8};
use crate::{CHANNEL_QUANTUM, ContractError, QuantScheme};
use half::f16;

/// Serialised-form magic (docs/q35-format.md section 7).
pub const MAGIC: [u8; 4] = *b"Q35W";
/// Serialised-form version.
pub const VERSION: u8 = 1;
/// Serialised header length in bytes.
pub const HEADER_BYTES: usize = 20;

/// `Ok` when a vector has the expected length, else
/// [`ContractError::LengthMismatch`] naming it.
fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), ContractError> {
    if got == expected {
        Ok(())
    } else {
        Err(ContractError::LengthMismatch {
            what,
            got,
            expected,
        })
    }
}

/// Group geometry of a `rows x cols` matrix with a given group size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Output rows.
    pub rows: usize,
    /// Input columns (reduction length), before padding.
    pub cols: usize,
    /// Channels per full group.
    pub group_size: usize,
}

impl Layout {
    /// Checks the dimensions and the group size.
    pub fn new(rows: usize, cols: usize, group_size: usize) -> Result<Layout, ContractError> {
        if rows == 0 || cols == 0 {
            return Err(ContractError::EmptyMatrix { rows, cols });
        }
        if group_size == 0 || !group_size.is_multiple_of(CHANNEL_QUANTUM) {
            return Err(ContractError::BadGroupSize(group_size));
        }
        Ok(Layout {
            rows,
            cols,
            group_size,
        })
    }

    /// Number of groups, `ceil(cols / group_size)`.
    pub fn n_groups(&self) -> usize {
        self.cols.div_ceil(self.group_size)
    }

    /// First channel of group `g`.
    pub fn group_start(&self, g: usize) -> usize {
        g * self.group_size
    }

    /// Real (unpadded) channels of group `g`.
    pub fn group_len(&self, g: usize) -> usize {
        (self.cols - self.group_start(g)).min(self.group_size)
    }

    /// Stored channels of group `g`: its length rounded up to a multiple of
    /// [`CHANNEL_QUANTUM`].
    pub fn group_padded_len(&self, g: usize) -> usize {
        self.group_len(g).next_multiple_of(CHANNEL_QUANTUM)
    }

    /// Stored channels of a row, `cols` padded.
    pub fn cols_padded(&self) -> usize {
        let last = self.n_groups() - 1;
        self.group_start(last) + self.group_padded_len(last)
    }

    /// Bytes of one block of group `g` under `scheme`.
    pub fn block_bytes(&self, scheme: QuantScheme, g: usize) -> usize {
        scheme.code_bits(self.group_padded_len(g)) / 8
    }

    /// Byte offset of block (`g`, `r`) in the packed code array.
    pub fn block_offset(&self, scheme: QuantScheme, g: usize, r: usize) -> usize {
        // Every group before `g` is full.
        g * self.rows * self.block_bytes(scheme, 0) + r * self.block_bytes(scheme, g)
    }

    /// Bytes of the whole packed code array.
    pub fn packed_bytes(&self, scheme: QuantScheme) -> usize {
        let last = self.n_groups() - 1;
        self.block_offset(scheme, last, 0) + self.rows * self.block_bytes(scheme, last)
    }

    /// Bytes of the slot mask (one bit per padded channel), when stored.
    pub fn mask_bytes(&self, scheme: QuantScheme) -> usize {
        if scheme.stores_slot_mask() {
            self.cols_padded().div_ceil(8)
        } else {
            0
        }
    }
}

/// A quantized `rows x cols` matrix in the packed storage of its scheme.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    layout: Layout,
    scheme: QuantScheme,
    /// Integer multiplier of 4-bit codes (Q35) or of all codes (uniform).
    mult4: u8,
    /// Integer multiplier of 3-bit codes (Q35; 1 for uniform schemes).
    mult3: u8,
    packed: Vec<u8>,
    /// Group-major: the scale of block (g, r) is `scales[g * rows + r]`.
    scales: Vec<f16>,
    /// Bit `j` (bit `j % 8` of byte `j / 8`) is 1 when padded channel `j`
    /// holds a 4-bit code. Only for schemes that store a mask.
    slot_mask: Option<Vec<u8>>,
}

/// Which channel offsets inside a group hold 4-bit and 3-bit codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupSlots {
    /// Ascending offsets of the 4-bit channels.
    pub four: Vec<usize>,
    /// Ascending offsets of the 3-bit channels.
    pub three: Vec<usize>,
}

impl QuantizedMatrix {
    /// Packs raw codes into a matrix. `codes` is row-major `rows x
    /// cols_padded`, each value the signed code of its channel (in the
    /// channel's 4-bit or 3-bit range for Q35); `scales` is row-major `rows x
    /// n_groups`; `four_bit` marks the 4-bit channels (Q35 only, `cols_padded`
    /// long, exactly half of every group).
    pub(crate) fn assemble(
        layout: Layout,
        scheme: QuantScheme,
        (mult4, mult3): (u8, u8),
        codes: &[i8],
        scales_row_major: &[f16],
        four_bit: Option<&[bool]>,
    ) -> QuantizedMatrix {
        let n_groups = layout.n_groups();
        let cp = layout.cols_padded();
        debug_assert_eq!(codes.len(), layout.rows * cp);
        debug_assert_eq!(scales_row_major.len(), layout.rows * n_groups);
        let mut scales = vec![f16::ZERO; layout.rows * n_groups];
        for r in 0..layout.rows {
            for g in 0..n_groups {
                scales[g * layout.rows + r] = scales_row_major[r * n_groups + g];
            }
        }
        let slot_mask = match (scheme.stores_slot_mask(), four_bit) {
            (true, Some(bits)) => {
                let mut mask = vec![0u8; cp.div_ceil(8)];
                for (j, &b) in bits.iter().enumerate() {
                    if b {
                        mask[j / 8] |= 1 << (j % 8);
                    }
                }
                Some(mask)
            }
            _ => None,
        };
        let mut m = QuantizedMatrix {
            layout,
            scheme,
            mult4,
            mult3,
            packed: vec![0u8; layout.packed_bytes(scheme)],
            scales,
            slot_mask,
        };
        let mut scratch = vec![0u8; layout.group_size];
        for g in 0..n_groups {
            let slots = m.group_slots(g);
            let start = layout.group_start(g);
            let plen = layout.group_padded_len(g);
            let bytes = layout.block_bytes(scheme, g);
            for r in 0..layout.rows {
                let row = &codes[r * cp + start..r * cp + start + plen];
                let off = layout.block_offset(scheme, g, r);
                let out = &mut m.packed[off..off + bytes];
                match scheme.uniform_bits() {
                    Some(width) => {
                        for (s, &c) in scratch.iter_mut().zip(row) {
                            *s = c as u8;
                        }
                        pack_bits(&scratch[..plen], width, out);
                    }
                    None => {
                        let slots = slots.as_ref().expect("Q35 schemes have slots");
                        for (p, (&a, &b)) in slots.four.iter().zip(&slots.three).enumerate() {
                            scratch[p] = pair_code(row[a], row[b]);
                        }
                        pack_bits(&scratch[..plen / 2], 7, out);
                    }
                }
            }
        }
        m
    }

    /// Rows `rows` of the matrix as a matrix of their own: the same codes,
    /// scales, multipliers and slot mask, bit for bit (each row's products
    /// and their group order do not depend on the other rows, so a matmul
    /// split by output rows over these pieces computes the same values).
    pub fn row_range(
        &self,
        rows: std::ops::Range<usize>,
    ) -> Result<QuantizedMatrix, ContractError> {
        let l = self.layout;
        if rows.start >= rows.end || rows.end > l.rows {
            return Err(ContractError::Corrupt(format!(
                "rows {}..{} of a matrix of {} rows",
                rows.start, rows.end, l.rows
            )));
        }
        let layout = Layout::new(rows.len(), l.cols, l.group_size)?;
        let n_groups = l.n_groups();
        let mut packed = Vec::with_capacity(layout.packed_bytes(self.scheme));
        let mut scales = Vec::with_capacity(rows.len() * n_groups);
        for g in 0..n_groups {
            let bytes = l.block_bytes(self.scheme, g);
            let at = l.block_offset(self.scheme, g, rows.start);
            packed.extend_from_slice(&self.packed[at..at + rows.len() * bytes]);
            scales.extend_from_slice(&self.scales[g * l.rows + rows.start..g * l.rows + rows.end]);
        }
        Ok(QuantizedMatrix {
            layout,
            scheme: self.scheme,
            mult4: self.mult4,
            mult3: self.mult3,
            packed,
            scales,
            slot_mask: self.slot_mask.clone(),
        })
    }

    /// Builds a matrix from raw codes, checking every range: `codes` is
    /// row-major `rows x cols_padded` (padding codes must be 0), `scales`
    /// row-major `rows x n_groups` and finite, and `four_bit` (Q35 schemes
    /// that store a mask) marks exactly half of every group's padded
    /// channels. Q35 codes must lie in -8..=7 (4-bit channels) or -4..=3
    /// (3-bit channels); uniform b-bit codes in `-2^(b-1) ..= 2^(b-1) - 1`.
    pub fn from_codes(
        layout: Layout,
        scheme: QuantScheme,
        mults: (u8, u8),
        codes: &[i8],
        scales: &[f16],
        four_bit: Option<&[bool]>,
    ) -> Result<QuantizedMatrix, ContractError> {
        scheme
            .check_multipliers(mults.0, mults.1)
            .map_err(ContractError::Corrupt)?;
        let cp = layout.cols_padded();
        check_len("codes", codes.len(), layout.rows * cp)?;
        check_len("scales", scales.len(), layout.rows * layout.n_groups())?;
        if let Some(index) = scales.iter().position(|s| !s.is_finite()) {
            return Err(ContractError::NonFinite {
                what: "scales",
                index,
            });
        }
        let mask: Vec<bool> = match (scheme, four_bit) {
            (QuantScheme::Q35 | QuantScheme::Q35Rtn, Some(m)) => {
                check_len("slot mask", m.len(), cp)?;
                m.to_vec()
            }
            (QuantScheme::Q35 | QuantScheme::Q35Rtn, None) => {
                return Err(ContractError::Corrupt(format!(
                    "scheme {scheme} needs a slot mask"
                )));
            }
            _ => (0..cp)
                .map(|j| scheme.is_q35() && j.is_multiple_of(2))
                .collect(),
        };
        for g in 0..layout.n_groups() {
            let start = layout.group_start(g);
            let plen = layout.group_padded_len(g);
            let fours = mask[start..start + plen].iter().filter(|&&b| b).count();
            if scheme.is_q35() && 2 * fours != plen {
                return Err(ContractError::Corrupt(format!(
                    "group {g} has {fours} 4-bit channels of {plen}; exactly half are required"
                )));
            }
        }
        // Per channel: the allowed codes (just 0 in padding), checked row by
        // row in storage order (the first bad code is the one reported).
        let allowed: Vec<(i32, i32)> = (0..cp)
            .map(|j| {
                let g = j / layout.group_size;
                if j < layout.group_start(g) + layout.group_len(g) {
                    scheme.code_range(mask[j])
                } else {
                    (0, 0)
                }
            })
            .collect();
        for (r, row) in codes.chunks_exact(cp.max(1)).enumerate() {
            let ok = row
                .iter()
                .zip(&allowed)
                .all(|(&c, &(lo, hi))| (lo..=hi).contains(&i32::from(c)));
            if ok {
                continue;
            }
            for (j, (&c, &(lo, hi))) in row.iter().zip(&allowed).enumerate() {
                if !(lo..=hi).contains(&i32::from(c)) {
                    let (lo, hi) = scheme.code_range(mask[j]);
                    return Err(ContractError::Corrupt(format!(
                        "code {c} at row {r}, channel {j} is outside {lo}..={hi} or in padding"
                    )));
                }
            }
        }
        Ok(QuantizedMatrix::assemble(
            layout,
            scheme,
            mults,
            codes,
            scales,
            Some(&mask),
        ))
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.layout.rows
    }

    /// Input columns (reduction length).
    pub fn cols(&self) -> usize {
        self.layout.cols
    }

    /// Channels per full group.
    pub fn group_size(&self) -> usize {
        self.layout.group_size
    }

    /// The group geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// Integer multipliers of 4-bit and 3-bit codes (`(1, 1)` for uniform
    /// schemes): a code `c` in a 4-bit slot contributes `mult4 * c`.
    pub fn multipliers(&self) -> (u8, u8) {
        (self.mult4, self.mult3)
    }

    /// The packed code array (group-major blocks).
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// Scales, group-major (`scales()[g * rows + r]`).
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// The stored slot mask, if the scheme stores one.
    pub fn slot_mask(&self) -> Option<&[u8]> {
        self.slot_mask.as_deref()
    }

    /// The scale of block (`g`, `r`) as f32 (exact).
    pub fn scale(&self, g: usize, r: usize) -> f32 {
        self.scales[g * self.layout.rows + r].to_f32()
    }

    /// The packed bytes of block (`g`, `r`).
    pub fn block(&self, g: usize, r: usize) -> &[u8] {
        let off = self.layout.block_offset(self.scheme, g, r);
        &self.packed[off..off + self.layout.block_bytes(self.scheme, g)]
    }

    /// Whether padded channel `j` holds a 4-bit code (Q35 schemes).
    pub fn is_four_bit(&self, j: usize) -> bool {
        match (&self.slot_mask, self.scheme) {
            (Some(mask), _) => (mask[j / 8] >> (j % 8)) & 1 == 1,
            (None, QuantScheme::Q35Alternating) => j.is_multiple_of(2),
            (None, _) => false,
        }
    }

    /// The 4-bit and 3-bit channel offsets of group `g` (Q35 schemes).
    pub(crate) fn group_slots(&self, g: usize) -> Option<GroupSlots> {
        if !self.scheme.is_q35() {
            return None;
        }
        let start = self.layout.group_start(g);
        let (four, three) = (0..self.layout.group_padded_len(g))
            .partition::<Vec<usize>, _>(|&o| self.is_four_bit(start + o));
        Some(GroupSlots { four, three })
    }

    /// Largest |integer weight| any block can hold: the `code_max` of the
    /// accumulator bound (`8 * mult4` or `4 * mult3` for Q35, `2^(b-1)` for
    /// uniform b-bit).
    pub fn code_max(&self) -> u64 {
        self.scheme.code_max_with((self.mult4, self.mult3))
    }

    /// Decodes block (`g`, `r`) into integer weights (codes times their
    /// multiplier) in natural channel order; `out` has the group's padded
    /// length.
    pub fn decode_block(&self, g: usize, r: usize, out: &mut [i8]) {
        let plen = self.layout.group_padded_len(g);
        debug_assert_eq!(out.len(), plen);
        let bytes = self.block(g, r);
        let mut raw = vec![0u8; plen];
        match self.scheme.uniform_bits() {
            Some(width) => {
                unpack_bits(bytes, width, &mut raw);
                for (o, &c) in out.iter_mut().zip(&raw) {
                    *o = sign_extend(c, width);
                }
            }
            None => {
                let slots = self.group_slots(g).expect("Q35 schemes have slots");
                self.decode_q35(bytes, &slots, &mut raw[..plen / 2], out);
            }
        }
    }

    fn decode_q35(&self, bytes: &[u8], slots: &GroupSlots, raw: &mut [u8], out: &mut [i8]) {
        unpack_bits(bytes, 7, raw);
        let (m4, m3) = (self.mult4 as i8, self.mult3 as i8);
        for (p, &code) in raw.iter().enumerate() {
            let (c4, c3) = split_pair(code);
            // |8 * 16| and |4 * 32| fit i8 only as -128: use wrapping, the
            // value is exact because the product is within -128..=127.
            out[slots.four[p]] = c4.wrapping_mul(m4);
            out[slots.three[p]] = c3.wrapping_mul(m3);
        }
    }

    /// The integer weights of all blocks, row-major `rows x cols` (padding
    /// dropped), with f32 scales: the form the matmul semantics runs on.
    pub fn unpack(&self) -> IntMatrix {
        let l = self.layout;
        let n_groups = l.n_groups();
        let mut q = vec![0i8; l.rows * l.cols];
        let mut scales = vec![0f32; l.rows * n_groups];
        let mut buf = vec![0i8; l.group_size];
        let mut raw = vec![0u8; l.group_size];
        for g in 0..n_groups {
            let slots = self.group_slots(g);
            let start = l.group_start(g);
            let len = l.group_len(g);
            let plen = l.group_padded_len(g);
            for r in 0..l.rows {
                match &slots {
                    Some(s) => {
                        self.decode_q35(self.block(g, r), s, &mut raw[..plen / 2], &mut buf[..plen])
                    }
                    None => self.decode_block(g, r, &mut buf[..plen]),
                }
                q[r * l.cols + start..r * l.cols + start + len].copy_from_slice(&buf[..len]);
                scales[r * n_groups + g] = self.scale(g, r);
            }
        }
        IntMatrix {
            rows: l.rows,
            cols: l.cols,
            group_size: l.group_size,
            q,
            scales,
            code_max: self.code_max(),
        }
    }

    /// Row `r` dequantized (`scale[g, r] * q` in f32 for each column, `g`
    /// its group), decoding only that row's blocks: equal bit for bit to
    /// [`IntMatrix::dequantize_row`] of [`Self::unpack`], which is what the
    /// golden model's embedding holds for a tied, quantized LM head. `None`
    /// past the last row.
    pub fn dequantize_row(&self, r: usize) -> Option<Vec<f32>> {
        let l = self.layout;
        if r >= l.rows {
            return None;
        }
        let mut out = vec![0f32; l.cols];
        let mut buf = vec![0i8; l.group_size];
        for g in 0..l.n_groups() {
            let (start, len, plen) = (l.group_start(g), l.group_len(g), l.group_padded_len(g));
            self.decode_block(g, r, &mut buf[..plen]);
            let s = self.scale(g, r);
            for (o, &q) in out[start..start + len].iter_mut().zip(&buf[..len]) {
                *o = s * f32::from(q);
            }
        }
        Some(out)
    }

    /// The dequantized weights, row-major `rows x cols`: `scale * q` in f32
    /// (exact, since an fp16 scale times a |q| <= 128 needs at most 19
    /// significant bits).
    pub fn dequantize(&self) -> Vec<f32> {
        self.unpack().dequantize()
    }

    /// Storage bits: packed codes + fp16 scales + slot mask.
    pub fn storage_bits(&self) -> u64 {
        8 * (self.packed.len() as u64
            + 2 * self.scales.len() as u64
            + self.slot_mask.as_ref().map_or(0, |m| m.len() as u64))
    }

    /// Storage bits per weight: [`Self::storage_bits`] over `rows * cols`
    /// (so padding counts against the format).
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bits() as f64 / (self.layout.rows * self.layout.cols) as f64
    }

    /// `y = W x` under the integer semantics (docs/q35-format.md, "Matmul"),
    /// decoding the packed blocks directly. Equal bit for bit to
    /// [`IntMatrix::matvec`] on [`Self::unpack`].
    pub fn matvec(&self, x: &ActivationI8) -> Result<Vec<f32>, ContractError> {
        let l = self.layout;
        if x.len() != l.cols {
            return Err(ContractError::LengthMismatch {
                what: "activation",
                got: x.len(),
                expected: l.cols,
            });
        }
        let n_groups = l.n_groups();
        let mut accs = vec![0i32; l.rows * n_groups];
        let mut buf = vec![0i8; l.group_size];
        for g in 0..n_groups {
            let start = l.group_start(g);
            let len = l.group_len(g);
            let plen = l.group_padded_len(g);
            for r in 0..l.rows {
                self.decode_block(g, r, &mut buf[..plen]);
                accs[r * n_groups + g] =
                    semantics::group_dot(&x.codes()[start..start + len], &buf[..len]);
            }
        }
        let mut y = vec![0f32; l.rows];
        let mut scales = vec![0f32; n_groups];
        for (r, out) in y.iter_mut().enumerate() {
            for (g, s) in scales.iter_mut().enumerate() {
                *s = self.scale(g, r);
            }
            *out = semantics::combine_groups(
                &accs[r * n_groups..(r + 1) * n_groups],
                &scales,
                x.scale(),
            );
        }
        Ok(y)
    }

    /// The serialised form (docs/q35-format.md, "Serialised form").
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_BYTES
                + self.slot_mask.as_ref().map_or(0, Vec::len)
                + 2 * self.scales.len()
                + self.packed.len(),
        );
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.scheme.tag());
        out.push(self.mult4);
        out.push(self.mult3);
        for v in [self.layout.rows, self.layout.cols, self.layout.group_size] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        if let Some(mask) = &self.slot_mask {
            out.extend_from_slice(mask);
        }
        for s in &self.scales {
            out.extend_from_slice(&s.to_bits().to_le_bytes());
        }
        out.extend_from_slice(&self.packed);
        out
    }

    /// Parses and validates a serialised matrix.
    pub fn from_bytes(bytes: &[u8]) -> Result<QuantizedMatrix, ContractError> {
        let corrupt = |m: String| ContractError::Corrupt(m);
        if bytes.len() < HEADER_BYTES {
            return Err(corrupt(format!(
                "{} bytes is shorter than the {HEADER_BYTES}-byte header",
                bytes.len()
            )));
        }
        if bytes[0..4] != MAGIC {
            return Err(corrupt("bad magic (expected \"Q35W\")".into()));
        }
        if bytes[4] != VERSION {
            return Err(corrupt(format!("unsupported version {}", bytes[4])));
        }
        let scheme = QuantScheme::from_tag(bytes[5])
            .ok_or_else(|| corrupt(format!("unknown scheme tag {}", bytes[5])))?;
        let (mult4, mult3) = (bytes[6], bytes[7]);
        scheme.check_multipliers(mult4, mult3).map_err(corrupt)?;
        let word =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let layout = Layout::new(word(8) as usize, word(12) as usize, word(16) as usize)
            .map_err(|e| corrupt(e.to_string()))?;
        let mask_len = layout.mask_bytes(scheme);
        let n_scales = layout
            .rows
            .checked_mul(layout.n_groups())
            .ok_or_else(|| corrupt("dimensions overflow".into()))?;
        let expected = HEADER_BYTES + mask_len + 2 * n_scales + layout.packed_bytes(scheme);
        if bytes.len() != expected {
            return Err(corrupt(format!(
                "{} bytes, expected {expected} for {scheme} {}x{} group {}",
                bytes.len(),
                layout.rows,
                layout.cols,
                layout.group_size
            )));
        }
        let mut pos = HEADER_BYTES;
        let slot_mask = if scheme.stores_slot_mask() {
            let mask = bytes[pos..pos + mask_len].to_vec();
            pos += mask_len;
            Some(mask)
        } else {
            None
        };
        let scales: Vec<f16> = bytes[pos..pos + 2 * n_scales]
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        pos += 2 * n_scales;
        if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
            return Err(corrupt(format!("scale {i} is not finite")));
        }
        let m = QuantizedMatrix {
            layout,
            scheme,
            mult4,
            mult3,
            packed: bytes[pos..].to_vec(),
            scales,
            slot_mask,
        };
        if m.slot_mask.is_some() {
            let cp = layout.cols_padded();
            if (cp..mask_len * 8).any(|j| m.is_four_bit(j)) {
                return Err(corrupt(
                    "slot mask has bits set past the padded columns".into(),
                ));
            }
            for g in 0..layout.n_groups() {
                let slots = m.group_slots(g).expect("mask implies Q35");
                if slots.four.len() != slots.three.len() {
                    return Err(corrupt(format!(
                        "group {g} has {} 4-bit and {} 3-bit channels; they must be equal",
                        slots.four.len(),
                        slots.three.len()
                    )));
                }
            }
        }
        Ok(m)
    }
}

/// Integer weights (codes times multipliers) with f32 group scales, row-major
/// and unpadded: the form the matmul semantics is defined on.
#[derive(Debug, Clone, PartialEq)]
pub struct IntMatrix {
    rows: usize,
    cols: usize,
    group_size: usize,
    /// Row-major `rows x cols`.
    q: Vec<i8>,
    /// Row-major `rows x n_groups`.
    scales: Vec<f32>,
    code_max: u64,
}

impl IntMatrix {
    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Channels per full group.
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// Largest |integer weight| the scheme allows.
    pub fn code_max(&self) -> u64 {
        self.code_max
    }

    /// Integer weights of row `r`.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.q[r * self.cols..(r + 1) * self.cols]
    }

    /// Scales of row `r`, one per group.
    pub fn row_scales(&self, r: usize) -> &[f32] {
        let n = self.cols.div_ceil(self.group_size);
        &self.scales[r * n..(r + 1) * n]
    }

    /// Dequantized weights, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        for (r, out) in w.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row_into(r, out);
        }
        w
    }

    /// Row `r` dequantized (`scale[g] * q` in f32 for each column, `g` its
    /// group): what an embedding lookup of a quantized table returns
    /// (docs/q35-format.md 8.4); `None` past the last row.
    pub fn dequantize_row(&self, r: usize) -> Option<Vec<f32>> {
        if r >= self.rows {
            return None;
        }
        let mut out = vec![0f32; self.cols];
        self.dequantize_row_into(r, &mut out);
        Some(out)
    }

    fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        let scales = self.row_scales(r);
        for (j, (o, &q)) in out.iter_mut().zip(self.row(r)).enumerate() {
            *o = scales[j / self.group_size] * f32::from(q);
        }
    }

    /// `y = W x` under the integer semantics.
    pub fn matvec(&self, x: &ActivationI8) -> Result<Vec<f32>, ContractError> {
        let mut y = vec![0f32; self.rows];
        self.matvec_into(x, &mut y)?;
        Ok(y)
    }

    /// `y = W x` into `y` (length `rows`).
    pub fn matvec_into(&self, x: &ActivationI8, y: &mut [f32]) -> Result<(), ContractError> {
        if x.len() != self.cols {
            return Err(ContractError::LengthMismatch {
                what: "activation",
                got: x.len(),
                expected: self.cols,
            });
        }
        if y.len() != self.rows {
            return Err(ContractError::LengthMismatch {
                what: "matvec output",
                got: y.len(),
                expected: self.rows,
            });
        }
        self.rows_into(x, 0, y);
        Ok(())
    }

    /// Rows `first .. first + y.len()` of `W x`.
    pub fn matvec_rows(
        &self,
        x: &ActivationI8,
        first: usize,
        y: &mut [f32],
    ) -> Result<(), ContractError> {
        if x.len() != self.cols {
            return Err(ContractError::LengthMismatch {
                what: "activation",
                got: x.len(),
                expected: self.cols,
            });
        }
        if first + y.len() > self.rows {
            return Err(ContractError::LengthMismatch {
                what: "matvec output rows",
                got: first + y.len(),
                expected: self.rows,
            });
        }
        self.rows_into(x, first, y);
        Ok(())
    }

    /// Outputs `first .. first + y.len()` of `y = W x` for activations with
    /// one scale per group (the variant of docs/q35-format.md section 14):
    /// the same exact int32 group sums as [`Self::matvec_rows`], combined by
    /// [`semantics::combine_groups_act`]. The activation's group must be the
    /// matrix's group size, so each accumulator has one activation scale.
    pub fn matvec_rows_grouped(
        &self,
        x: &GroupedActivationI8,
        first: usize,
        y: &mut [f32],
    ) -> Result<(), ContractError> {
        if x.len() != self.cols {
            return Err(ContractError::LengthMismatch {
                what: "activation",
                got: x.len(),
                expected: self.cols,
            });
        }
        if x.group() != self.group_size {
            return Err(ContractError::LengthMismatch {
                what: "activation group size",
                got: x.group(),
                expected: self.group_size,
            });
        }
        if first + y.len() > self.rows {
            return Err(ContractError::LengthMismatch {
                what: "matvec output rows",
                got: first + y.len(),
                expected: self.rows,
            });
        }
        let n_groups = self.cols.div_ceil(self.group_size);
        let mut accs = vec![0i32; n_groups];
        let wide = dots::Widened::new(x.codes());
        for (i, out) in y.iter_mut().enumerate() {
            let r = first + i;
            dots::group_dots(&wide, self.row(r), self.group_size, &mut accs);
            *out = semantics::combine_groups_act(&accs, self.row_scales(r), x.scales());
        }
        Ok(())
    }

    fn rows_into(&self, x: &ActivationI8, first: usize, y: &mut [f32]) {
        // Each group's sum is `semantics::group_dot`, exactly (crate::dots).
        let n_groups = self.cols.div_ceil(self.group_size);
        let mut accs = vec![0i32; n_groups];
        let wide = dots::Widened::new(x.codes());
        for (i, out) in y.iter_mut().enumerate() {
            let r = first + i;
            dots::group_dots(&wide, self.row(r), self.group_size, &mut accs);
            *out = semantics::combine_groups(&accs, self.row_scales(r), x.scale());
        }
    }

    /// `Y = W X` for a batch of activation vectors, using up to `threads`
    /// threads (results do not depend on the thread count). Returns one
    /// output vector per input.
    pub fn matmul(
        &self,
        xs: &[ActivationI8],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ContractError> {
        if let Some(x) = xs.iter().find(|x| x.len() != self.cols) {
            return Err(ContractError::LengthMismatch {
                what: "activation",
                got: x.len(),
                expected: self.cols,
            });
        }
        let mut ys = vec![vec![0f32; self.rows]; xs.len()];
        let threads = threads.max(1);
        let chunk = self.rows.div_ceil(threads).max(1);
        // Split the rows across threads; every thread handles all tokens.
        let mut per_thread: Vec<Vec<Vec<f32>>> = Vec::new();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.rows)
                .step_by(chunk)
                .map(|first| {
                    let n = chunk.min(self.rows - first);
                    scope.spawn(move || {
                        xs.iter()
                            .map(|x| {
                                let mut y = vec![0f32; n];
                                self.rows_into(x, first, &mut y);
                                y
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                per_thread.push(h.join().expect("matmul worker panicked"));
            }
        });
        for (t, part) in per_thread.into_iter().enumerate() {
            let first = t * chunk;
            for (y, p) in ys.iter_mut().zip(part) {
                y[first..first + p.len()].copy_from_slice(&p);
            }
        }
        Ok(ys)
    }
}
