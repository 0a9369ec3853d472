//! The weight quantization schemes and every fact about them the format,
//! the quantizers, the compiler and the simulator rely on
//! (docs/q35-format.md sections 1, 5, 6 and 7): spelling, serialised tag,
//! code widths and ranges, multiplier bounds and the largest integer weight.
//! Nothing else in the workspace repeats these facts.

/// Largest 4-bit-slot multiplier `m4` (docs/q35-format.md section 1):
/// `8 * 16 = 128` keeps `|q| <= 128`.
pub const MULT4_MAX: u8 = 16;

/// Largest 3-bit-slot multiplier `m3` (docs/q35-format.md section 1):
/// `4 * 32 = 128` keeps `|q| <= 128`.
pub const MULT3_MAX: u8 = 32;

/// A weight quantization scheme. The discriminant is the serialised tag
/// (docs/q35-format.md section 7, header byte 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum QuantScheme {
    /// Q35, 3.5 bits a weight, with activation-aware scales and 4-bit slots.
    Q35 = 0,
    /// Q35 with round-to-nearest scales and magnitude-chosen slots.
    Q35Rtn = 1,
    /// 3.5 bits a weight with a fixed alternation of 4-bit and 3-bit slots.
    Q35Alternating = 2,
    /// Uniform symmetric int8.
    Int8 = 3,
    /// Uniform symmetric int4.
    Int4 = 4,
    /// Uniform symmetric int3.
    Int3 = 5,
}

impl QuantScheme {
    /// Every scheme, in the order reports list them.
    pub const ALL: [QuantScheme; 6] = [
        QuantScheme::Int8,
        QuantScheme::Int4,
        QuantScheme::Q35,
        QuantScheme::Q35Rtn,
        QuantScheme::Q35Alternating,
        QuantScheme::Int3,
    ];

    /// Every scheme in serialised-tag order (`BY_TAG[t].tag() == t`).
    pub const BY_TAG: [QuantScheme; 6] = [
        QuantScheme::Q35,
        QuantScheme::Q35Rtn,
        QuantScheme::Q35Alternating,
        QuantScheme::Int8,
        QuantScheme::Int4,
        QuantScheme::Int3,
    ];

    /// The spellings of [`Self::BY_TAG`], in that order: the list
    /// diagnostics print (model.toml, `--q35-verify`).
    pub const NAMES: [&'static str; 6] = {
        let mut names = [""; 6];
        let mut i = 0;
        while i < names.len() {
            names[i] = QuantScheme::BY_TAG[i].as_str();
            i += 1;
        }
        names
    };

    /// The spelling used in model.toml, on the command line and in IR
    /// (`!q35.qweight<"q35", ...>`).
    pub const fn as_str(self) -> &'static str {
        match self {
            QuantScheme::Q35 => "q35",
            QuantScheme::Q35Rtn => "q35-rtn",
            QuantScheme::Q35Alternating => "q35-alternating",
            QuantScheme::Int8 => "int8",
            QuantScheme::Int4 => "int4",
            QuantScheme::Int3 => "int3",
        }
    }

    /// The one-byte tag of the serialised form.
    pub const fn tag(self) -> u8 {
        self as u8
    }

    /// The scheme with serialised tag `tag`.
    pub fn from_tag(tag: u8) -> Option<QuantScheme> {
        QuantScheme::BY_TAG.get(usize::from(tag)).copied()
    }

    /// Whether the scheme stores Q35 pairs (a 4-bit and a 3-bit code).
    pub const fn is_q35(self) -> bool {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn | QuantScheme::Q35Alternating => true,
            QuantScheme::Int8 | QuantScheme::Int4 | QuantScheme::Int3 => false,
        }
    }

    /// Whether the scheme stores an explicit slot mask (which channels are
    /// 4-bit). The fixed alternation needs none.
    pub const fn stores_slot_mask(self) -> bool {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn => true,
            QuantScheme::Q35Alternating
            | QuantScheme::Int8
            | QuantScheme::Int4
            | QuantScheme::Int3 => false,
        }
    }

    /// Whether the quantizer needs a per-input-channel importance
    /// (calibration).
    pub const fn needs_importance(self) -> bool {
        match self {
            QuantScheme::Q35 => true,
            QuantScheme::Q35Rtn
            | QuantScheme::Q35Alternating
            | QuantScheme::Int8
            | QuantScheme::Int4
            | QuantScheme::Int3 => false,
        }
    }

    /// Code width `b` of a uniform scheme (codes `-2^(b-1) ..= 2^(b-1) - 1`,
    /// section 5); `None` for the Q35 schemes.
    pub const fn uniform_bits(self) -> Option<u32> {
        match self {
            QuantScheme::Int8 => Some(8),
            QuantScheme::Int4 => Some(4),
            QuantScheme::Int3 => Some(3),
            QuantScheme::Q35 | QuantScheme::Q35Rtn | QuantScheme::Q35Alternating => None,
        }
    }

    /// Storage bits of the codes of `n` channels (`n` a multiple of
    /// [`crate::CHANNEL_QUANTUM`]): 3.5, 8, 4 or 3 a channel.
    pub const fn code_bits(self, n: usize) -> usize {
        match self.uniform_bits() {
            Some(b) => b as usize * n,
            None => 7 * n / 2,
        }
    }

    /// The signed code range of a channel (section 1 and 5): `-8 ..= 7` for
    /// a Q35 4-bit slot, `-4 ..= 3` for a 3-bit slot (`four_bit` picks), the
    /// b-bit range for a uniform scheme (`four_bit` ignored).
    pub const fn code_range(self, four_bit: bool) -> (i32, i32) {
        match self.uniform_bits() {
            Some(b) => (-(1 << (b - 1)), (1 << (b - 1)) - 1),
            None if four_bit => (-8, 7),
            None => (-4, 3),
        }
    }

    /// Checks the code multipliers `(m4, m3)` allowed for the scheme (header
    /// bytes 6 and 7): `1 ..= 16` and `1 ..= 32` for Q35, exactly `(1, 1)`
    /// for uniform schemes. The error says which rule failed.
    pub fn check_multipliers(self, mult4: u8, mult3: u8) -> Result<(), String> {
        if self.is_q35() {
            if !(1..=MULT4_MAX).contains(&mult4) || !(1..=MULT3_MAX).contains(&mult3) {
                return Err(format!(
                    "Q35 multipliers ({mult4}, {mult3}) outside 1..={MULT4_MAX} and 1..={MULT3_MAX}"
                ));
            }
        } else if (mult4, mult3) != (1, 1) {
            return Err(format!(
                "uniform scheme {self} must have multipliers (1, 1), not ({mult4}, {mult3})"
            ));
        }
        Ok(())
    }

    /// Largest |integer weight| of a matrix stored with multipliers
    /// `(m4, m3)`: `max(8 m4, 4 m3)` for Q35, `2^(b-1)` for uniform b-bit
    /// (the `code_max` of the accumulator bound, section 8.3).
    pub const fn code_max_with(self, (mult4, mult3): (u8, u8)) -> u64 {
        match self.uniform_bits() {
            Some(b) => 1 << (b - 1),
            None => {
                let (a, b) = (8 * mult4 as u64, 4 * mult3 as u64);
                if a > b { a } else { b }
            }
        }
    }

    /// Largest |integer weight| the scheme's storage can hold with any valid
    /// multipliers: what a compiler that does not know the multipliers must
    /// assume (128 for every Q35 scheme, `2^(b-1)` for uniform b-bit).
    pub const fn code_max(self) -> u64 {
        self.code_max_with((MULT4_MAX, MULT3_MAX))
    }
}

impl std::str::FromStr for QuantScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        QuantScheme::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = QuantScheme::ALL.iter().map(|q| q.as_str()).collect();
                format!("unknown scheme `{s}`, expected one of {}", all.join(", "))
            })
    }
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_spellings_and_lists_agree() {
        for (t, s) in QuantScheme::BY_TAG.into_iter().enumerate() {
            assert_eq!(usize::from(s.tag()), t);
            assert_eq!(QuantScheme::from_tag(s.tag()), Some(s));
            assert_eq!(QuantScheme::NAMES[t], s.as_str());
            assert_eq!(s.as_str().parse::<QuantScheme>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert!(QuantScheme::ALL.contains(&s));
        }
        assert_eq!(QuantScheme::from_tag(6), None);
        assert_eq!(
            "q36".parse::<QuantScheme>().unwrap_err(),
            "unknown scheme `q36`, expected one of int8, int4, q35, q35-rtn, q35-alternating, int3"
        );
    }

    #[test]
    fn storage_facts() {
        // docs/q35-format.md sections 1, 5, 6.
        let facts = [
            (QuantScheme::Q35, 56, true, true, 128),
            (QuantScheme::Q35Rtn, 56, true, false, 128),
            (QuantScheme::Q35Alternating, 56, false, false, 128),
            (QuantScheme::Int8, 128, false, false, 128),
            (QuantScheme::Int4, 64, false, false, 8),
            (QuantScheme::Int3, 48, false, false, 4),
        ];
        for (s, bits16, mask, imp, code_max) in facts {
            assert_eq!(s.code_bits(16), bits16, "{s}");
            assert_eq!(s.stores_slot_mask(), mask, "{s}");
            assert_eq!(s.needs_importance(), imp, "{s}");
            assert_eq!(s.code_max(), code_max, "{s}");
            assert_eq!(s.is_q35(), s.uniform_bits().is_none(), "{s}");
        }
        assert_eq!(QuantScheme::Q35.code_max_with((4, 7)), 32);
        assert_eq!(QuantScheme::Q35.code_max_with((1, 2)), 8);
        assert_eq!(QuantScheme::Int4.code_max_with((1, 1)), 8);
        assert_eq!(QuantScheme::Q35.code_range(true), (-8, 7));
        assert_eq!(QuantScheme::Q35.code_range(false), (-4, 3));
        assert_eq!(QuantScheme::Int8.code_range(false), (-128, 127));
        assert_eq!(QuantScheme::Int3.code_range(true), (-4, 3));
    }

    #[test]
    fn multiplier_bounds() {
        assert!(QuantScheme::Q35.check_multipliers(16, 32).is_ok());
        assert!(QuantScheme::Q35.check_multipliers(0, 7).is_err());
        assert!(QuantScheme::Q35.check_multipliers(17, 7).is_err());
        assert!(QuantScheme::Q35.check_multipliers(4, 33).is_err());
        assert!(QuantScheme::Int4.check_multipliers(1, 1).is_ok());
        let e = QuantScheme::Int4.check_multipliers(4, 7).unwrap_err();
        assert_eq!(
            e,
            "uniform scheme int4 must have multipliers (1, 1), not (4, 7)"
        );
    }
}
