//! Rotary position embedding data (docs/q35-format.md section 8.4, "RoPE
//! table"): the angles exactly as ggml forms them, and the cos/sin table the
//! compiler computes once and ships with the program. The f32 reference
//! (q35-reference) takes its angles from [`rope_thetas`] too, so the
//! reference, the golden model and the machine rotate by the same angles.

/// The RoPE angles of position `pos`, pair by pair (`head_dim / 2` of them),
/// as ggml's `ggml_rope_cache_init` forms them: `theta_0 = pos` (f32), each
/// next angle the previous times `theta_scale = base^(-2 / head_dim)` (an
/// f32 running product, not a fresh power).
pub fn rope_thetas(pos: usize, head_dim: usize, base: f32) -> impl Iterator<Item = f32> {
    let theta_scale = base.powf(-2.0f32 / head_dim as f32);
    std::iter::successors(Some(pos as f32), move |t| Some(t * theta_scale)).take(head_dim / 2)
}

/// Rotary-embedding cos/sin table: data the compiler computes once and
/// ships with the program, so no implementation evaluates a transcendental.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    head_dim: usize,
    /// `cos[pos * head_dim / 2 + i]`.
    cos: Vec<f32>,
    /// `sin[pos * head_dim / 2 + i]`.
    sin: Vec<f32>,
}

impl RopeTable {
    /// The table for positions `0 .. positions`, with angles as ggml's
    /// `ggml_rope_cache_init` forms them (so the table matches llama.cpp):
    /// `theta_scale = base^(-2 / head_dim)` in f32, `theta_0 = pos` (f32),
    /// `theta_{i+1} = theta_i * theta_scale` (f32 multiply); each entry is
    /// `cos`/`sin` of the f32 angle evaluated in f64 and rounded to f32.
    /// This runs in the compiler only; the table is shipped as data.
    pub fn new(head_dim: usize, base: f32, positions: usize) -> RopeTable {
        let (cos, sin) = (0..positions)
            .flat_map(|pos| rope_thetas(pos, head_dim, base))
            .map(|theta| {
                let t = f64::from(theta);
                (t.cos() as f32, t.sin() as f32)
            })
            .unzip();
        RopeTable { head_dim, cos, sin }
    }

    /// Head dimension the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Number of positions in the table.
    pub fn positions(&self) -> usize {
        self.cos.len() / (self.head_dim / 2).max(1)
    }

    /// `(cos, sin)` of pair `i` at position `pos`.
    pub fn get(&self, pos: usize, i: usize) -> (f32, f32) {
        let k = pos * (self.head_dim / 2) + i;
        (self.cos[k], self.sin[k])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thetas_are_a_running_f32_product() {
        let t: Vec<f32> = rope_thetas(3, 8, 10000.0).collect();
        let scale = 10000f32.powf(-2.0 / 8.0);
        assert_eq!(
            t,
            [
                3.0,
                3.0 * scale,
                3.0 * scale * scale,
                3.0 * scale * scale * scale
            ]
        );
    }

    #[test]
    fn table_entries_are_f64_cos_sin_of_the_f32_angles() {
        let table = RopeTable::new(8, 10000.0, 5);
        assert_eq!((table.head_dim(), table.positions()), (8, 5));
        for pos in 0..5 {
            for (i, theta) in rope_thetas(pos, 8, 10000.0).enumerate() {
                let t = f64::from(theta);
                assert_eq!(table.get(pos, i), (t.cos() as f32, t.sin() as f32));
            }
        }
    }
}
