//! The quantized matmul `y = W x` (docs/q35-format.md 8.2) on the MXM
//! planes: 3.5-bit weights packed in MEM, unpacked at the VXM on their way
//! to a plane, one plane tile per (output column tile, group), the groups
//! combined at the VXM in ascending order.
//!
//! # Tiles
//!
//! `W` (`N` rows x `K` cols, groups of `G`) is cut into tiles of one group
//! `g` (its padded length `L_g <= 320` plane rows) x 320 output rows
//! `r0 = 320 c ..` (docs/backend design, first decision). A tile is one
//! `lw` of `L_g` rows (16 a cycle), one `iw` and one `mm new` of the
//! group's int8 activation vector; the plane's int32 output (lane `r` =
//! output row `r0 + r`) is the group's exact partial sum `acc_g`.
//!
//! # MEM image ([`place_weight`])
//!
//! Per tile, `L_g / 16` *unpack words*, each 7 MEM words at one address in
//! 7 slices (byte plane `b` in slice `b`): lane `r` holds bytes
//! `7u .. 7u + 7` of block `(g, r0 + r)` (docs/q35-format.md 4: one
//! little-endian 56-bit word of 8 pair codes; rows past `N` are zero).
//! `unpack35` turns one into 16 int8 weight rows in pair order (row `2k` =
//! `q_A[k]`, row `2k + 1` = `q_B[k]`) that flow straight into the plane's
//! `lw`. The tile's scales are one f16 word in 2 slices, lane `r` =
//! `d[g, r0 + r]`. Each plane has its own 7 code slices and 2 scale slices
//! in its hemisphere: a west plane (position 0) reads its codes from west
//! slices eastward to the VXM and takes the unpacked rows westward; east
//! planes are mirrored, so one unpack uses 7 streams one way and 16 the
//! other.
//!
//! # Activations
//!
//! Tile rows are in pair order, so the int8 vector fed to `mm` for group
//! `g` holds `x[A[0]], x[B[0]], x[A[1]], ...` on lanes `0, 1, 2, ...`. It is
//! built once per group: each `xs` word the group touches (two when it
//! straddles a 320-lane boundary) is permuted by the SXM of `xs`'s
//! hemisphere (maps are program tables); for a straddling group the first
//! word's permutation is written to a staging word and read back to meet
//! the second at a VXM `select` under a constant u8 mask. `f32toi8` rounds
//! exactly as the contract's `q_i` (the buffer `xs` already holds
//! `x_i * inv`); the result is written to one scratch int8 word per
//! hemisphere that has planes in use (each in its own slice), which that
//! hemisphere's planes read. Lanes of padding channels and lanes past
//! `L_g` are don't-cares: their weight rows are zero.
//!
//! # Scheduling
//!
//! Bundles are placed in order: the activation bundles, then the tiles
//! group-major (every column tile of group 0, then group 1, ...) on the
//! planes round-robin, then one combine bundle per column tile. A plane
//! then runs at its bound (docs/mxm-timing.md 2: two tiles per
//! `L/16 + swap + d(L)` cycles, 24 a tile for `L = 128`); the rest of a
//! matmul's cycles is the path xs -> SXM -> VXM -> plane (about 120
//! cycles to the first `mm`) and plane -> VXM -> products -> combine.
//!
//! # Combine
//!
//! Per tile at the VXM: `p = i32tof32(acc) * f16tof32(d)`, kept in a
//! scratch word per (group, column tile). Per column tile one bundle then
//! sums them in ascending group order, `y = fconst +0.0; y = y + p_g`
//! (one `fadd` every ALU latency, each `p_g` read to arrive just in time:
//! no MEM round trip inside the chain), and writes `y * scale` to word `c`
//! of `y`.

use q35_contract::QuantizedMatrix;
use q35_isa::{Acc, DType, Dir, ElemWidth, F32Imm, Hemisphere, Instruction, QueueId, QueueKind};
use q35_isa::{Stream, TableId};

use crate::alloc::{AllocError, Buffer};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::{Cycle, Mach};
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, QSel, SchedError, Val};

/// Placeholder stream: the scheduler assigns the real ids.
const S: Stream = Stream::east(0);
/// Rows one `unpack35` produces (and one `lw` cycle installs).
const UNPACK_ROWS: u32 = 16;
/// Bytes of one unpack word (one 56-bit word of 8 pairs per lane).
const UNPACK_BYTES: usize = 7;

/// Why a weight cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// MEM is full.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The matrix or the plane list is outside what the kernel handles.
    #[error("weight `{name}`: {message}")]
    Unsupported {
        /// The weight.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// The MEM image of the tiles one MXM plane runs.
#[derive(Clone, Debug)]
pub struct PlaneImage {
    /// The plane (0, 1 west; 2, 3 east).
    pub plane: u16,
    /// Unpack words: 7 slices, byte plane `b` in slice `b`.
    pub codes: Buffer,
    /// Scales: f16, 2 slices, one word per tile.
    pub scales: Buffer,
}

/// One plane tile: output column tile `col` x group `group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Output column tile (rows `320 col ..`).
    pub col: u32,
    /// Group.
    pub group: u32,
    /// Index into [`PlacedWeight::planes`].
    pub plane: usize,
    /// First unpack word in that plane's `codes`.
    pub word: u32,
    /// Word of its scales in that plane's `scales`.
    pub scale_word: u32,
}

/// How group `g`'s activation vector is gathered from `xs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPerm {
    /// First channel.
    pub start: u32,
    /// Padded length (plane rows).
    pub padded: u32,
    /// Per `xs` word the group touches (ascending, one or two): the word and
    /// its permute map.
    pub parts: Vec<(u32, TableId)>,
    /// For a group touching two words: the word of `masks` selecting the
    /// first one's lanes (mask byte 1) over the second's, which is also its
    /// word of `stage` (where the first word's permutation waits for the
    /// second's).
    pub mask_word: Option<u32>,
}

/// A Q35 matrix placed in MEM for [`matmul`].
#[derive(Clone, Debug)]
pub struct PlacedWeight {
    /// Name (tables and buffers are named after it).
    pub name: String,
    /// Output rows `N`.
    pub rows: u32,
    /// Input columns `K`.
    pub cols: u32,
    /// Group size `G`.
    pub group_size: u32,
    /// `ceil(N / 320)`.
    pub col_tiles: u32,
    /// Number of groups.
    pub groups: u32,
    /// Multipliers `(m4, m3)`.
    pub mults: (u8, u8),
    /// Per plane used, its image.
    pub planes: Vec<PlaneImage>,
    /// The tiles in issue order (group-major: every column tile of group 0,
    /// then of group 1, ...).
    pub tiles: Vec<Tile>,
    /// Per group, how its activation vector is built.
    pub perms: Vec<GroupPerm>,
    /// Select masks of groups that straddle two `xs` words (u8, 1 slice).
    pub masks: Option<Buffer>,
    /// Scratch of groups that straddle two `xs` words: the first word's
    /// permutation (f32, 4 slices, a word per such group).
    pub stage: Option<Buffer>,
    /// Scratch: the int8 activation vector of each group, one copy in
    /// each hemisphere that has a plane in use (`act[g]` lists them): the
    /// planes of a hemisphere read their own copy, so every read of one
    /// copy has the same offset from its `mm` and reads in issue order
    /// never wait for each other. Each copy is one word of its own slice
    /// (the groups spread over slices).
    pub act: Vec<Vec<Buffer>>,
    /// Scratch: the products `p = f32(acc_g) * f32(d[g, r])` of every tile
    /// and token (f32, word `k * groups * col_tiles + g * col_tiles + c`
    /// for token `k`), combined per column tile.
    pub products: Buffer,
    /// When not empty, the products of token `k` and group `g` are in
    /// `products_pieces[k * groups + g]` instead (word `c`; each piece in
    /// whichever hemisphere had room): a large weight's scratch for many
    /// tokens in pieces that fit the slices the even fill left half free.
    pub products_pieces: Vec<Buffer>,
    /// Tokens one [`matmul_tokens`] may stream through each installed tile
    /// (the scratch above is sized for them).
    pub tokens: u32,
}

impl PlacedWeight {
    /// Words of the activation buffer `xs` a [`matmul`] reads (per token).
    pub fn xs_words(&self) -> u32 {
        self.cols.div_ceil(LANES)
    }

    /// Where word `i` (`g * col_tiles + c`) of token `k`'s products lies.
    fn product(&self, k: u32, i: u32) -> (&Buffer, u32) {
        let (g, c) = (i / self.col_tiles, i % self.col_tiles);
        match self.products_pieces.get((k * self.groups + g) as usize) {
            Some(b) => (b, c),
            None => (&self.products, k * self.groups * self.col_tiles + i),
        }
    }

    /// Words of `stage` one token uses (one per straddling group).
    fn stage_words(&self) -> u32 {
        self.perms.iter().filter(|g| g.mask_word.is_some()).count() as u32
    }
}

fn unsupported(name: &str, message: impl Into<String>) -> PlaceError {
    PlaceError::Unsupported {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Places `m` in MEM for [`matmul`] on MXM planes `planes` (tiles go to
/// them round-robin in issue order): the unpack words and scales of every
/// tile, the activation permutation tables and select masks of every group,
/// and the kernel's scratch words (see the module doc for the layouts).
pub fn place_weight(
    p: &mut ProgramBuilder,
    name: &str,
    m: &QuantizedMatrix,
    planes: &[u16],
) -> Result<PlacedWeight, PlaceError> {
    place_weight_tokens(p, name, m, planes, 1)
}

/// [`place_weight`] with scratch for [`matmul_tokens`] of up to `tokens`
/// tokens (the weight image is the same; the activation vectors, staging
/// words and products are per token).
pub fn place_weight_tokens(
    p: &mut ProgramBuilder,
    name: &str,
    m: &QuantizedMatrix,
    planes: &[u16],
    tokens: u32,
) -> Result<PlacedWeight, PlaceError> {
    if tokens == 0 {
        return Err(unsupported(name, "a matmul of zero tokens"));
    }
    if !m.scheme().is_q35() {
        return Err(unsupported(
            name,
            format!(
                "scheme {} is not 3.5-bit (unpack35 decodes Q35 only)",
                m.scheme()
            ),
        ));
    }
    let n_planes = p.mach().target.mxm.planes;
    if planes.is_empty() {
        return Err(unsupported(name, "no MXM plane to run on"));
    }
    for (i, &pl) in planes.iter().enumerate() {
        if u32::from(pl) >= n_planes || planes[..i].contains(&pl) {
            return Err(unsupported(
                name,
                format!("plane {pl} is not one of {n_planes} distinct planes"),
            ));
        }
    }
    let layout = m.layout();
    let (rows, cols) = (layout.rows, layout.cols);
    let n_groups = layout.n_groups();
    let plane_rows = p.mach().mxm_rows as usize;
    for g in 0..n_groups {
        if layout.group_padded_len(g) > plane_rows {
            return Err(unsupported(
                name,
                format!(
                    "group {g} has {} padded channels; a tile holds at most {plane_rows} plane rows",
                    layout.group_padded_len(g)
                ),
            ));
        }
    }
    let lanes = LANES as usize;
    let col_tiles = rows.div_ceil(lanes);
    let as_u32 = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| unsupported(name, format!("{what} {v} is too large")))
    };

    // Tiles, group-major, to planes round-robin.
    let mut tiles = Vec::new();
    let mut plane_words = vec![0u32; planes.len()];
    let mut plane_tiles = vec![0u32; planes.len()];
    for g in 0..n_groups {
        let nu = as_u32(layout.group_padded_len(g), "group length")? / UNPACK_ROWS;
        for c in 0..col_tiles {
            let i = tiles.len() % planes.len();
            tiles.push(Tile {
                col: as_u32(c, "column tile")?,
                group: as_u32(g, "group")?,
                plane: i,
                word: plane_words[i],
                scale_word: plane_tiles[i],
            });
            plane_words[i] += nu;
            plane_tiles[i] += 1;
        }
    }

    // Per plane: code slices and scale slices in the plane's hemisphere.
    let mut images = Vec::new();
    for (i, &pl) in planes.iter().enumerate() {
        let h = if p.mach().position(Mach::plane_queue(pl)) < p.mach().vxm {
            Hemisphere::West
        } else {
            Hemisphere::East
        };
        let words = plane_words[i].max(1);
        let codes = p.place_slices(&format!("{name}.codes.p{pl}"), h, UNPACK_BYTES, words)?;
        let scales = p.buffer(
            &format!("{name}.scales.p{pl}"),
            DType::F16,
            u64::from(plane_tiles[i].max(1)) * u64::from(LANES),
            h,
        )?;
        if !p.weight_images() {
            // A timing-only program: the image's place, not its contents.
            images.push(PlaneImage {
                plane: pl,
                codes,
                scales,
            });
            continue;
        }
        let mut bytes = vec![vec![0u8; words as usize * lanes]; UNPACK_BYTES];
        let mut sc = vec![0u32; plane_tiles[i].max(1) as usize * lanes];
        for t in tiles.iter().filter(|t| t.plane == i) {
            let g = t.group as usize;
            let r0 = t.col as usize * lanes;
            let nu = layout.group_padded_len(g) / UNPACK_ROWS as usize;
            for r in 0..lanes.min(rows - r0) {
                let block = m.block(g, r0 + r);
                for u in 0..nu {
                    let w = (t.word as usize + u) * lanes + r;
                    for (b, plane) in bytes.iter_mut().enumerate() {
                        plane[w] = block[UNPACK_BYTES * u + b];
                    }
                }
                sc[t.scale_word as usize * lanes + r] =
                    u32::from(m.scales()[g * rows + r0 + r].to_bits());
            }
        }
        for (b, plane) in bytes.into_iter().enumerate() {
            p.init_words(codes.slices[b], codes.addr, plane);
        }
        p.init(&scales, DType::F16, sc);
        images.push(PlaneImage {
            plane: pl,
            codes,
            scales,
        });
    }

    // Activation permutations.
    let mut perms = Vec::new();
    let mut masks = Vec::new();
    for g in 0..n_groups {
        let start = layout.group_start(g);
        let plen = layout.group_padded_len(g);
        let (four, three): (Vec<usize>, Vec<usize>) =
            (start..start + plen).partition(|&j| m.is_four_bit(j));
        let order: Vec<usize> = four
            .iter()
            .zip(&three)
            .flat_map(|(&a, &b)| [a, b])
            .collect();
        let (w0, w1) = (start / lanes, (start + plen - 1) / lanes);
        let mut parts = Vec::new();
        for w in w0..=w1 {
            let map: Vec<u16> = (0..lanes)
                .map(|l| match order.get(l) {
                    Some(&j) if j / lanes == w => (j % lanes) as u16,
                    _ => l as u16,
                })
                .collect();
            let id = p.table(&format!("{name}.perm.g{g}.w{w}"), map);
            parts.push((as_u32(w, "word")?, id));
        }
        let mask_word = if w1 > w0 {
            let mask = (0..lanes).map(|l| match order.get(l) {
                Some(&j) => u32::from(j / lanes == w0),
                None => 1,
            });
            masks.extend(mask);
            Some(as_u32(masks.len() / lanes - 1, "mask word")?)
        } else {
            None
        };
        perms.push(GroupPerm {
            start: as_u32(start, "group start")?,
            padded: as_u32(plen, "group length")?,
            parts,
            mask_word,
        });
    }
    let masks = if masks.is_empty() {
        None
    } else {
        let n = masks.len() as u64;
        let buf = p.buffer(&format!("{name}.masks"), DType::U8, n, Hemisphere::West)?;
        if p.weight_images() {
            p.init(&buf, DType::U8, masks);
        }
        Some(buf)
    };
    let mut sides: Vec<Hemisphere> = Vec::new();
    for img in &images {
        let h = img.codes.hemisphere().unwrap_or(Hemisphere::West);
        if !sides.contains(&h) {
            sides.push(h);
        }
    }
    // A batch's products (`tokens` users) as a later program's
    // ([`with_scratch`]): a large one in pieces, the others where there is
    // more room. All of them east in one piece each filled that hemisphere
    // before the east planes' images were placed while the west had room
    // (SmolLM2 at context 64, 4 users, the LM head's 5,544 words a slice).
    // One token's products go east in one piece (what the one-user
    // schedule was tuned with).
    let split = tokens > 1
        && (n_groups * col_tiles) as u64 * u64::from(tokens) > u64::from(SPLIT_PRODUCTS_WORDS);
    let (stage, act, products) = place_scratch(
        p,
        name,
        masks
            .as_ref()
            .map(|m| u64::from(m.words) * u64::from(LANES)),
        n_groups,
        col_tiles,
        &sides,
        tokens,
        (!split).then(|| {
            if tokens > 1 {
                p.alloc.roomier()
            } else {
                Hemisphere::East
            }
        }),
    )?;
    let pieces = if split {
        let off: Vec<&Buffer> = images.iter().map(|i| &i.scales).collect();
        products_pieces(
            p,
            name,
            as_u32(n_groups, "groups")?,
            as_u32(col_tiles, "column tiles")?,
            tokens,
            &off,
        )?
    } else {
        Vec::new()
    };
    let products = match (products, pieces.first()) {
        (_, Some(first)) => first.clone(),
        (Some(b), None) => b,
        (None, None) => return Err(unsupported(name, "no products scratch")),
    };
    let (m4, m3) = m.multipliers();
    Ok(PlacedWeight {
        name: name.to_string(),
        rows: as_u32(rows, "rows")?,
        cols: as_u32(cols, "cols")?,
        group_size: as_u32(layout.group_size, "group size")?,
        col_tiles: as_u32(col_tiles, "column tiles")?,
        groups: as_u32(n_groups, "groups")?,
        mults: (m4, m3),
        planes: images,
        tiles,
        perms,
        masks,
        stage,
        act,
        products,
        products_pieces: pieces,
        tokens,
    })
}

/// A weight's scratch for `tokens` tokens: the staging words of groups
/// that straddle two `xs` words (`mask_elems` lanes of masks, if any), the
/// int8 activation vector of each group on each side in `sides`, and the
/// products (in hemisphere `products_side`, if given: the tile and combine
/// bundles stream them either way). Allocated in this order (the decode
/// program's layout depends on it).
#[expect(
    clippy::type_complexity,
    reason = "the three scratch buffers, named at the call"
)]
#[expect(
    clippy::too_many_arguments,
    reason = "the scratch's shape, spelled out"
)]
fn place_scratch(
    p: &mut ProgramBuilder,
    name: &str,
    mask_elems: Option<u64>,
    n_groups: usize,
    col_tiles: usize,
    sides: &[Hemisphere],
    tokens: u32,
    products_side: Option<Hemisphere>,
) -> Result<(Option<Buffer>, Vec<Vec<Buffer>>, Option<Buffer>), PlaceError> {
    let stage = match mask_elems {
        Some(n) => Some(p.buffer(
            &format!("{name}.stage"),
            DType::F32,
            n * u64::from(tokens),
            Hemisphere::West,
        )?),
        None => None,
    };
    let act = (0..n_groups)
        .map(|g| {
            sides
                .iter()
                .map(|&h| {
                    let side = match h {
                        Hemisphere::West => "w",
                        Hemisphere::East => "e",
                    };
                    p.buffer(
                        &format!("{name}.act.g{g}.{side}"),
                        DType::I8,
                        u64::from(tokens) * u64::from(LANES),
                        h,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let products = match products_side {
        Some(h) => Some(p.buffer_either(
            &format!("{name}.products"),
            DType::F32,
            (n_groups * col_tiles) as u64 * u64::from(tokens) * u64::from(LANES),
            h,
        )?),
        None => None,
    };
    Ok((stage, act, products))
}

/// Products scratch larger than this many words (per slice) is placed one
/// piece per token by [`with_scratch`].
const SPLIT_PRODUCTS_WORDS: u32 = 2048;

/// A large products scratch in one piece per token and group
/// ([`PlacedWeight::products_pieces`]), each `col_tiles` words, in the
/// hemisphere with more room: small pieces still find room in a MEM whose
/// slices are nearly full.
fn products_pieces(
    p: &mut ProgramBuilder,
    name: &str,
    groups: u32,
    col_tiles: u32,
    tokens: u32,
    keep_off: &[&Buffer],
) -> Result<Vec<Buffer>, PlaceError> {
    let h = p.alloc.roomier();
    // Each piece avoids what new buffers avoid now and the pieces before
    // it, which spreads them over the hemisphere; once that leaves no room
    // it avoids `keep_off` (the weight's scale slices) only, rather than
    // falling back onto any slice: a tile bundle reads the scale word on
    // each token's cycle while it writes the tokens' products, where its
    // code words are read before the first product and pieces are written
    // and read on cycles of their own. Falling back onto any slice put a
    // LLaMA-70B-shaped `attn_q` piece's products (32 users: 2,048 pieces)
    // on its scale slice, a product written on the cycle the scale word
    // was read there: a bundle that meets itself. (Keeping off the whole
    // image instead left too few slices for the next weights' 7-slice
    // images: the 70B block at batch 8 then needed 16 chips, not 7.)
    let off: std::collections::BTreeSet<q35_isa::QueueId> = keep_off
        .iter()
        .flat_map(|b| b.slices.iter().copied())
        .collect();
    let before = p.avoided().clone();
    let words = col_tiles.max(1);
    let mut pieces = Vec::new();
    for k in 0..tokens {
        for g in 0..groups {
            if !p.alloc.room_outside(h, 4, words, p.avoided()) {
                p.set_avoided(off.clone());
            }
            pieces.push(p.buffer_either(
                &format!("{name}.products.t{k}.g{g}"),
                DType::F32,
                u64::from(col_tiles) * u64::from(LANES),
                h,
            )?);
        }
    }
    p.set_avoided(before);
    Ok(pieces)
}

/// Words of products scratch [`matmul_tokens`] of `tokens` tokens needs
/// for `w` (f32, 4 slices).
pub fn products_words(w: &PlacedWeight, tokens: u32) -> u32 {
    w.groups * w.col_tiles * tokens
}

/// `w` (placed by another program of the same binary: its image, tables
/// and masks stay where they are) with fresh scratch for [`matmul_tokens`]
/// of up to `tokens` tokens, allocated by `p`. The products go to the first
/// of `pools` big enough and clear of the weight's image slices (a buffer
/// several weights share: the scheduler orders every write of a MEM word
/// after the earlier reads of it, so sharing costs overlap, never
/// correctness), else to the hemisphere with more free MEM.
pub fn with_scratch(
    p: &mut ProgramBuilder,
    w: &PlacedWeight,
    tokens: u32,
    pools: &[&Buffer],
) -> Result<PlacedWeight, PlaceError> {
    if tokens == 0 {
        return Err(unsupported(&w.name, "a matmul of zero tokens"));
    }
    let sides: Vec<Hemisphere> = w
        .act
        .first()
        .map(|a| a.iter().filter_map(Buffer::hemisphere).collect())
        .unwrap_or_default();
    // The scratch is read and written in the same bundles as the weight's
    // image, at fixed offsets: on one of its slices a bundle could clash
    // with itself, so it keeps off them (as place_weight_tokens's does).
    let image: Vec<&Buffer> = w
        .planes
        .iter()
        .flat_map(|i| [&i.codes, &i.scales])
        .chain(w.masks.as_ref())
        .collect();
    p.also_avoid(&image);
    let need = products_words(w, tokens);
    let pool = pools.iter().copied().find(|b| {
        b.words >= need
            && b.slices.len() == 4
            && !image
                .iter()
                .any(|i| i.slices.iter().any(|s| b.slices.contains(s)))
    });
    // A large scratch (the LM head's) in one piece per token and group.
    let split = pool.is_none() && tokens > 1 && need > SPLIT_PRODUCTS_WORDS;
    let (stage, act, own) = place_scratch(
        p,
        &w.name,
        w.masks
            .as_ref()
            .map(|m| u64::from(m.words) * u64::from(LANES)),
        w.groups as usize,
        w.col_tiles as usize,
        &sides,
        tokens,
        (pool.is_none() && !split).then(|| p.alloc.roomier()),
    )?;
    let pieces = if split {
        let scales: Vec<&Buffer> = w.planes.iter().map(|i| &i.scales).collect();
        products_pieces(p, &w.name, w.groups, w.col_tiles, tokens, &scales)?
    } else {
        Vec::new()
    };
    let products = match (own, pool, pieces.first()) {
        (_, _, Some(first)) => first.clone(),
        (Some(b), _, None) => b,
        (None, Some(pool), None) => Buffer {
            name: format!("{}.products", w.name),
            slices: pool.slices.clone(),
            addr: pool.addr,
            words: need,
        },
        (None, None, None) => return Err(unsupported(&w.name, "no products scratch")),
    };
    Ok(PlacedWeight {
        stage,
        act,
        products,
        products_pieces: pieces,
        tokens,
        ..w.clone()
    })
}

fn kernel_err(label: &str, message: impl Into<String>) -> SchedError {
    SchedError::Kernel {
        label: label.to_string(),
        message: message.into(),
    }
}

/// `y = W x` (docs/q35-format.md 8.2) for a weight placed by
/// [`place_weight`].
///
/// - `xs`: f32, 4 slices, natural layout (element `i` on lane `i % 320` of
///   word `i / 320`), `xs_i = x_i * inv` (the quantize kernel's output;
///   all zeros for a zero token);
/// - `scale`: f32, 4 slices, word 0 holds the activation scale on every
///   lane;
/// - `y`: f32, 4 slices, `ceil(N / 320)` words, element `r` on lane
///   `r % 320` of word `r / 320` (lanes past `N` in the last word become
///   `+0.0`).
///
/// Returns the last cycle used.
pub fn matmul(
    p: &mut ProgramBuilder,
    label: &str,
    xs: &Buffer,
    scale: &Buffer,
    w: &PlacedWeight,
    y: &Buffer,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    matmul_tokens(
        p,
        label,
        std::slice::from_ref(xs),
        std::slice::from_ref(scale),
        w,
        std::slice::from_ref(y),
        not_before,
    )
}

/// [`matmul`] of `tokens` tokens at once (prefill, or a batch of users):
/// each installed tile streams every token's activation vector through the
/// plane, one `mm` a cycle, so a tile's install is paid once for all of
/// them (docs/mxm-timing.md 4: stream-bound once `tokens >= 40` on lpu-v1).
/// Token `k`'s operands are `xs[k]`, `scale[k]` and `y[k]` (each laid out
/// as for [`matmul`]; views of one buffer per token, typically). Every
/// token's result is bit for bit the one-token [`matmul`]'s: the same
/// integer sums and the same f32 operations in the same order. `w` must have been placed for at
/// least `tokens` tokens ([`place_weight_tokens`]).
pub fn matmul_tokens(
    p: &mut ProgramBuilder,
    label: &str,
    xs: &[Buffer],
    scale: &[Buffer],
    w: &PlacedWeight,
    y: &[Buffer],
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let tokens = xs.len() as u32;
    if scale.len() != xs.len() || y.len() != xs.len() {
        return Err(kernel_err(
            label,
            format!(
                "{} activations, {} scales and {} outputs: one of each per token",
                xs.len(),
                scale.len(),
                y.len()
            ),
        ));
    }
    if tokens == 0 || tokens > w.tokens {
        return Err(kernel_err(
            label,
            format!(
                "{tokens} tokens: weight `{}` has scratch for 1 to {}",
                w.name, w.tokens
            ),
        ));
    }
    let operands = xs
        .iter()
        .map(|b| (b, w.xs_words()))
        .chain(scale.iter().map(|b| (b, 1)))
        .chain(y.iter().map(|b| (b, w.col_tiles)));
    for (buf, words) in operands {
        if buf.slices.len() != 4 || buf.words < words {
            return Err(kernel_err(
                label,
                format!(
                    "buffer `{}` must be f32 (4 slices) of at least {words} words; it has {} slices of {} words",
                    buf.name,
                    buf.slices.len(),
                    buf.words
                ),
            ));
        }
    }
    let m = p.mach().clone();
    let mut last = not_before;
    for g in 0..w.groups {
        for (k, xk) in (0..tokens).zip(xs) {
            if let Some(b) = stage_bundle(&m, label, xk, w, g, k)? {
                p.sched.place(b, not_before)?;
            }
            let b = activation_bundle(&m, label, xk, w, g, k)?;
            last = last.max(p.sched.place(b, not_before)?.last);
        }
    }
    for t in &w.tiles {
        let b = tile_bundle(&m, label, w, t, tokens)?;
        last = last.max(p.sched.place(b, not_before)?.last);
    }
    for (k, (sk, yk)) in (0..tokens).zip(scale.iter().zip(y)) {
        for c in 0..w.col_tiles {
            let b = combine_bundle(&m, label, sk, w, c, yk, k)?;
            last = last.max(p.sched.place(b, not_before)?.last);
        }
    }
    Ok(last)
}

/// Word `word` of `xs` permuted by `map` at the SXM of hemisphere `h`,
/// arriving at the VXM on local cycle `t`.
#[expect(clippy::too_many_arguments, reason = "one permute's whole description")]
fn permuted(
    b: &mut Bundle,
    m: &Mach,
    xs: &Buffer,
    word: u32,
    map: TableId,
    h: Hemisphere,
    t: Cycle,
    label: &str,
) -> Result<Val, SchedError> {
    let q = QueueId::new(QueueKind::Sxm(h)).ok_or_else(|| kernel_err(label, "no SXM"))?;
    let pos = m.position(q);
    let out = Mach::dir(pos, m.vxm).ok_or_else(|| kernel_err(label, "SXM at the VXM"))?;
    let ins = Instruction::Permute {
        src: S,
        dst: S,
        map,
        ew: ElemWidth::B4,
    };
    let issue = t - m.hops(pos, m.vxm) - m.latency(&ins);
    let v = b.read(m, &xs.slices, xs.addr + word, pos, issue)?;
    let r = b.unit(
        m,
        QSel::Fixed(q),
        issue,
        ins,
        &[("src", v)],
        Some(("dst", out)),
    )?;
    r.ok_or_else(|| kernel_err(label, "permute without a result"))
}

/// The SXM nearest `xs` (the one of its hemisphere).
fn near_sxm(xs: &Buffer) -> Hemisphere {
    xs.hemisphere().unwrap_or(Hemisphere::West)
}

/// For a group straddling two `xs` words: the bundle permuting the first
/// one into the group's `stage` word (the second is permuted in the
/// activation bundle, which reads this one back to meet it at the VXM).
fn stage_bundle(
    m: &Mach,
    label: &str,
    xs: &Buffer,
    w: &PlacedWeight,
    g: u32,
    k: u32,
) -> Result<Option<Bundle>, SchedError> {
    let gp = &w.perms[g as usize];
    let (&[(w0, m0), _], Some(sw), Some(stage)) = (gp.parts.as_slice(), gp.mask_word, &w.stage)
    else {
        return Ok(None);
    };
    let mut b = Bundle::new(label);
    let q =
        QueueId::new(QueueKind::Sxm(near_sxm(xs))).ok_or_else(|| kernel_err(label, "no SXM"))?;
    let pos = m.position(q);
    let ins = Instruction::Permute {
        src: S,
        dst: S,
        map: m0,
        ew: ElemWidth::B4,
    };
    let v = b.read(m, &xs.slices, xs.addr + w0, pos, 0)?;
    let out = Mach::dir(pos, m.vxm).ok_or_else(|| kernel_err(label, "SXM at the VXM"))?;
    let r = b
        .unit(m, QSel::Fixed(q), 0, ins, &[("src", v)], Some(("dst", out)))?
        .ok_or_else(|| kernel_err(label, "permute without a result"))?;
    from_vxm(&mut b, m, r, stage, stage_word(w, sw, k))?;
    Ok(Some(b))
}

/// The bundle that builds group `g`'s int8 activation vector in `w.act`.
fn activation_bundle(
    m: &Mach,
    label: &str,
    xs: &Buffer,
    w: &PlacedWeight,
    g: u32,
    k: u32,
) -> Result<Bundle, SchedError> {
    let x0 = 0;
    let mut b = Bundle::new(label);
    let gp = &w.perms[g as usize];
    let cvt = Instruction::F32toi8 { a: S, dst: S };
    let h = near_sxm(xs);
    let merged = match (gp.parts.as_slice(), gp.mask_word, &w.masks, &w.stage) {
        (&[(word, map)], None, _, _) => permuted(&mut b, m, xs, x0 + word, map, h, 0, label)?,
        (&[_, (w1, m1)], Some(mw), Some(masks), Some(stage)) => {
            let sel = Instruction::Select {
                m: S,
                a: S,
                b: S,
                dst: S,
            };
            let t = -m.latency(&sel);
            let a = to_vxm(&mut b, m, stage, stage_word(w, mw, k), t)?;
            let c = permuted(&mut b, m, xs, x0 + w1, m1, h, t, label)?;
            let k = to_vxm(&mut b, m, masks, mw, t)?;
            b.unit(
                m,
                QSel::AnyVxm,
                t,
                sel,
                &[("m", k), ("a", a), ("b", c)],
                Some(("dst", Dir::East)),
            )?
            .ok_or_else(|| kernel_err(label, "select without a result"))?
        }
        _ => {
            return Err(kernel_err(
                label,
                format!("group {g}: inconsistent permutation"),
            ));
        }
    };
    for act in &w.act[g as usize] {
        let q = vxm(&mut b, m, 0, cvt, &[("a", merged)], dir_to(act), label)?;
        from_vxm(&mut b, m, q, act, k)?;
    }
    Ok(b)
}

/// Token `k`'s word of `stage` for the straddling group whose mask word is
/// `mw`.
fn stage_word(w: &PlacedWeight, mw: u32, k: u32) -> u32 {
    k * w.stage_words() + mw
}

/// A VXM instruction at local cycle `t` with a result.
fn vxm(
    b: &mut Bundle,
    m: &Mach,
    t: Cycle,
    ins: Instruction,
    inputs: &[(&str, Val)],
    dir: Dir,
    label: &str,
) -> Result<Val, SchedError> {
    b.unit(m, QSel::AnyVxm, t, ins, inputs, Some(("dst", dir)))?
        .ok_or_else(|| kernel_err(label, format!("`{}` without a result", ins.mnemonic())))
}

/// The bundle of one tile: unpack and load its weights, multiply each of
/// the `tokens` activation vectors of the group (one `mm` a cycle), scale
/// the plane's sums by the tile's scales and keep the products in
/// `w.products`.
fn tile_bundle(
    m: &Mach,
    label: &str,
    w: &PlacedWeight,
    t: &Tile,
    tokens: u32,
) -> Result<Bundle, SchedError> {
    let mut b = Bundle::new(label);
    let img = &w.planes[t.plane];
    let q = Mach::plane_queue(img.plane);
    let ppos = m.position(q);
    let (in_dir, out_dir) = m.plane_dirs(img.plane);
    let n = w.perms[t.group as usize].padded;
    let nu = n / UNPACK_ROWS;
    let (m4, m3) = (u32::from(w.mults.0), u32::from(w.mults.1));

    // The plane: lw, iw, mm (the first mm at 0).
    let t_mm: Cycle = 0;
    let t_iw = t_mm - m.swap;
    let t_lw = t_iw - Cycle::from(nu);
    let slot = b.slot(in_dir, UNPACK_ROWS as u8);
    let mut rows = Vec::new();
    for u in 0..nu {
        let ins = Instruction::Unpack35 {
            src: S,
            dst: S,
            m4,
            m3,
        };
        let tu = t_lw + Cycle::from(u) - m.hops(m.vxm, ppos) - m.latency(&ins);
        let codes = b.read(m, &img.codes.slices, img.codes.addr + t.word + u, m.vxm, tu)?;
        rows.push(b.unit_into(m, QSel::AnyVxm, tu, ins, &[("src", codes)], "dst", slot, 0)?);
    }
    b.lw(m, img.plane, t_lw, UNPACK_ROWS, n, &rows)?;
    b.unit(m, QSel::Fixed(q), t_iw, Instruction::Iw {}, &[], None)?;
    let side = img.codes.hemisphere();
    let act = w.act[t.group as usize]
        .iter()
        .find(|a| a.hemisphere() == side)
        .ok_or_else(|| kernel_err(label, "no activation copy in the plane's hemisphere"))?;
    let i2f = Instruction::I32tof32 { a: S, dst: S };
    let h2f = Instruction::F16tof32 { a: S, dst: S };
    if m.latency(&i2f) != m.latency(&h2f) {
        return Err(kernel_err(
            label,
            "i32tof32 and f16tof32 latencies differ (the tile assumes one convert latency)",
        ));
    }
    let fmul = Instruction::Fmul { a: S, b: S, dst: S };
    for k in 0..tokens {
        let tk = t_mm + Cycle::from(k);
        let a = b.read(m, &act.slices, act.addr + k, ppos, tk)?;
        let mm = Instruction::Mm {
            src: S,
            dst: S,
            acc: Acc::New,
        };
        let acc = b
            .unit(
                m,
                QSel::Fixed(q),
                tk,
                mm,
                &[("src", a)],
                Some(("dst", out_dir)),
            )?
            .ok_or_else(|| kernel_err(label, "mm without a result"))?;
        let ta = b
            .arrival(m, acc, m.vxm)
            .ok_or_else(|| kernel_err(label, "the plane's result never reaches the VXM"))?;

        // p = f32(acc) * f32(d).
        let af = vxm(&mut b, m, ta, i2f, &[("a", acc)], Dir::East, label)?;
        let d = b.read(
            m,
            &img.scales.slices,
            img.scales.addr + t.scale_word,
            m.vxm,
            ta,
        )?;
        let df = vxm(&mut b, m, ta, h2f, &[("a", d)], Dir::East, label)?;
        let t1 = ta + m.latency(&i2f);
        let (buf, word) = w.product(k, t.group * w.col_tiles + t.col);
        let prod = vxm(
            &mut b,
            m,
            t1,
            fmul,
            &[("a", af), ("b", df)],
            dir_to(buf),
            label,
        )?;
        from_vxm(&mut b, m, prod, buf, word)?;
    }
    Ok(b)
}

/// The bundle combining column tile `c` of token `k`: `y = +0.0; y = y + p_g` for
/// `g = 0, 1, ...` (one `fadd` every ALU latency, each product read from
/// `w.products` to arrive just in time), then `y * scale` into word `c` of
/// `y`.
fn combine_bundle(
    m: &Mach,
    label: &str,
    scale: &Buffer,
    w: &PlacedWeight,
    c: u32,
    y: &Buffer,
    k: u32,
) -> Result<Bundle, SchedError> {
    let mut b = Bundle::new(label);
    let fadd = Instruction::Fadd { a: S, b: S, dst: S };
    let fmul = Instruction::Fmul { a: S, b: S, dst: S };
    let zero = Instruction::Fconst {
        imm: F32Imm::new(0.0),
        dst: S,
    };
    let step = m.latency(&fadd);
    let mut acc = vxm(&mut b, m, -m.latency(&zero), zero, &[], Dir::East, label)?;
    let mut t: Cycle = 0;
    for g in 0..w.groups {
        let (buf, word) = w.product(k, g * w.col_tiles + c);
        let p = to_vxm(&mut b, m, buf, word, t)?;
        acc = vxm(
            &mut b,
            m,
            t,
            fadd,
            &[("a", acc), ("b", p)],
            Dir::East,
            label,
        )?;
        t += step;
    }
    let s = to_vxm(&mut b, m, scale, 0, t)?;
    let out = vxm(
        &mut b,
        m,
        t,
        fmul,
        &[("a", acc), ("b", s)],
        dir_to(y),
        label,
    )?;
    from_vxm(&mut b, m, out, y, c)?;
    Ok(b)
}
