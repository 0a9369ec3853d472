//! Instruction queues (docs/isa.md 2): their names (`mem.w43 .. mem.w0`,
//! `mem.e0 .. mem.e43`, `vxm.0 .. vxm.15`, `mxm.0 .. mxm.3`, `sxm.w`,
//! `sxm.e`, `c2c.0 .. c2c.15`), the dense numbering binaries use, and the
//! unit each one drives.

use std::fmt;
use std::str::FromStr;

use crate::info::Unit;

/// MEM slices per hemisphere (`mem.slices / 2` on lpu-v1).
pub const MEM_SLICES_PER_HEMISPHERE: u16 = 44;
/// VXM ALU queues (`vxm.alus_per_lane` on lpu-v1).
pub const VXM_QUEUES: u16 = 16;
/// MXM planes (`mxm.planes` on lpu-v1), 0 and 1 west, 2 and 3 east.
pub const MXM_PLANES: u16 = 4;
/// Chip-to-chip links (`c2c.links_per_chip` on lpu-v1), one queue each.
pub const C2C_LINKS: u16 = 16;
/// Queues in all.
pub const QUEUE_COUNT: u16 =
    2 * MEM_SLICES_PER_HEMISPHERE + VXM_QUEUES + MXM_PLANES + 2 + C2C_LINKS;

const VXM_BASE: u16 = 2 * MEM_SLICES_PER_HEMISPHERE;
const MXM_BASE: u16 = VXM_BASE + VXM_QUEUES;
const SXM_BASE: u16 = MXM_BASE + MXM_PLANES;
const C2C_BASE: u16 = SXM_BASE + 2;

/// West or east of the VXM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hemisphere {
    /// Positions below the VXM.
    West,
    /// Positions above the VXM.
    East,
}

impl Hemisphere {
    /// `w` or `e`, as in queue names.
    pub const fn letter(self) -> char {
        match self {
            Hemisphere::West => 'w',
            Hemisphere::East => 'e',
        }
    }
}

/// What a queue drives, with its index within its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueKind {
    /// MEM slice `index` of a hemisphere, counted outward from the VXM
    /// (`mem.w0` and `mem.e0` are the VXM's neighbours).
    Mem {
        /// Hemisphere.
        hemisphere: Hemisphere,
        /// Index from the VXM, `0 .. MEM_SLICES_PER_HEMISPHERE`.
        index: u16,
    },
    /// VXM ALU queue `0 .. VXM_QUEUES`.
    Vxm(u16),
    /// MXM plane `0 .. MXM_PLANES` (0, 1 west; 2, 3 east).
    Mxm(u16),
    /// The SXM of a hemisphere.
    Sxm(Hemisphere),
    /// Chip-to-chip link `0 .. C2C_LINKS`.
    C2c(u16),
}

/// An instruction queue, by its dense number `0 .. QUEUE_COUNT`: west to
/// east over the MEM slices (`mem.w43` = 0 .. `mem.w0` = 43, `mem.e0` = 44 ..
/// `mem.e43` = 87), then `vxm.0 .. vxm.15` (88 ..), `mxm.0 .. mxm.3` (104 ..),
/// `sxm.w` (108), `sxm.e` (109), `c2c.0 .. c2c.15` (110 ..). Always valid
/// once constructed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u16);

impl QueueId {
    /// The queue with dense number `index`, if there is one.
    pub const fn from_index(index: u16) -> Option<QueueId> {
        if index < QUEUE_COUNT {
            Some(QueueId(index))
        } else {
            None
        }
    }

    /// Its dense number (the queue id of `.lpubin`).
    pub const fn index(self) -> u16 {
        self.0
    }

    /// Every queue, in dense order.
    pub fn all() -> impl Iterator<Item = QueueId> {
        (0..QUEUE_COUNT).map(QueueId)
    }

    /// The queue of a kind, if its index is in range.
    pub const fn new(kind: QueueKind) -> Option<QueueId> {
        let n = MEM_SLICES_PER_HEMISPHERE;
        match kind {
            QueueKind::Mem {
                hemisphere: Hemisphere::West,
                index,
            } if index < n => Some(QueueId(n - 1 - index)),
            QueueKind::Mem {
                hemisphere: Hemisphere::East,
                index,
            } if index < n => Some(QueueId(n + index)),
            QueueKind::Mem { .. } => None,
            QueueKind::Vxm(i) if i < VXM_QUEUES => Some(QueueId(VXM_BASE + i)),
            QueueKind::Vxm(_) => None,
            QueueKind::Mxm(i) if i < MXM_PLANES => Some(QueueId(MXM_BASE + i)),
            QueueKind::Mxm(_) => None,
            QueueKind::Sxm(Hemisphere::West) => Some(QueueId(SXM_BASE)),
            QueueKind::Sxm(Hemisphere::East) => Some(QueueId(SXM_BASE + 1)),
            QueueKind::C2c(i) if i < C2C_LINKS => Some(QueueId(C2C_BASE + i)),
            QueueKind::C2c(_) => None,
        }
    }

    /// What it drives.
    pub const fn kind(self) -> QueueKind {
        let n = MEM_SLICES_PER_HEMISPHERE;
        let i = self.0;
        if i < n {
            QueueKind::Mem {
                hemisphere: Hemisphere::West,
                index: n - 1 - i,
            }
        } else if i < VXM_BASE {
            QueueKind::Mem {
                hemisphere: Hemisphere::East,
                index: i - n,
            }
        } else if i < MXM_BASE {
            QueueKind::Vxm(i - VXM_BASE)
        } else if i < SXM_BASE {
            QueueKind::Mxm(i - MXM_BASE)
        } else if i == SXM_BASE {
            QueueKind::Sxm(Hemisphere::West)
        } else if i == SXM_BASE + 1 {
            QueueKind::Sxm(Hemisphere::East)
        } else {
            QueueKind::C2c(i - C2C_BASE)
        }
    }

    /// The unit its non-control instructions must belong to.
    pub const fn unit(self) -> Unit {
        match self.kind() {
            QueueKind::Mem { .. } => Unit::Mem,
            QueueKind::Vxm(_) => Unit::Vxm,
            QueueKind::Mxm(_) => Unit::Mxm,
            QueueKind::Sxm(_) => Unit::Sxm,
            QueueKind::C2c(_) => Unit::C2c,
        }
    }

    /// The hemisphere it stands in (`None` for the VXM and the links, which
    /// stand at the centre).
    pub const fn hemisphere(self) -> Option<Hemisphere> {
        match self.kind() {
            QueueKind::Mem { hemisphere, .. } => Some(hemisphere),
            QueueKind::Vxm(_) => None,
            QueueKind::Mxm(p) => Some(if p < MXM_PLANES / 2 {
                Hemisphere::West
            } else {
                Hemisphere::East
            }),
            QueueKind::Sxm(h) => Some(h),
            QueueKind::C2c(_) => None,
        }
    }

    /// Whether it may hold an instruction of `unit` (control: always).
    pub const fn accepts(self, unit: Unit) -> bool {
        matches!(unit, Unit::Control) || self.unit() as u8 == unit as u8
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            QueueKind::Mem { hemisphere, index } => write!(f, "mem.{}{index}", hemisphere.letter()),
            QueueKind::Vxm(i) => write!(f, "vxm.{i}"),
            QueueKind::Mxm(i) => write!(f, "mxm.{i}"),
            QueueKind::Sxm(h) => write!(f, "sxm.{}", h.letter()),
            QueueKind::C2c(i) => write!(f, "c2c.{i}"),
        }
    }
}

/// A queue name that names no queue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown queue `{0}` (expected mem.w43..mem.w0, mem.e0..mem.e43, vxm.0..vxm.15, mxm.0..mxm.3, sxm.w, sxm.e or c2c.0..c2c.15)"
)]
pub struct UnknownQueue(pub String);

impl FromStr for QueueId {
    type Err = UnknownQueue;
    fn from_str(s: &str) -> Result<QueueId, UnknownQueue> {
        let err = || UnknownQueue(s.to_string());
        let (unit, rest) = s.split_once('.').ok_or_else(err)?;
        // Canonical decimal only, so that every queue has one spelling.
        let number = |t: &str| -> Option<u16> {
            if t.is_empty()
                || (t.len() > 1 && t.starts_with('0'))
                || !t.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            t.parse().ok()
        };
        let kind = match unit {
            "mem" => {
                let hemisphere = match rest.as_bytes().first() {
                    Some(b'w') => Hemisphere::West,
                    Some(b'e') => Hemisphere::East,
                    _ => return Err(err()),
                };
                QueueKind::Mem {
                    hemisphere,
                    index: number(&rest[1..]).ok_or_else(err)?,
                }
            }
            "vxm" => QueueKind::Vxm(number(rest).ok_or_else(err)?),
            "mxm" => QueueKind::Mxm(number(rest).ok_or_else(err)?),
            "c2c" => QueueKind::C2c(number(rest).ok_or_else(err)?),
            "sxm" => match rest {
                "w" => QueueKind::Sxm(Hemisphere::West),
                "e" => QueueKind::Sxm(Hemisphere::East),
                _ => return Err(err()),
            },
            _ => return Err(err()),
        };
        QueueId::new(kind).ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for q in QueueId::all() {
            let name = q.to_string();
            assert_eq!(name.parse::<QueueId>(), Ok(q), "{name}");
            assert_eq!(QueueId::new(q.kind()), Some(q));
        }
        assert_eq!(QUEUE_COUNT, 126);
        assert_eq!("c2c.0".parse::<QueueId>().map(QueueId::index), Ok(110));
        assert_eq!("c2c.15".parse::<QueueId>().map(QueueId::index), Ok(125));
        assert_eq!("mem.w43".parse::<QueueId>().map(QueueId::index), Ok(0));
        assert_eq!("mem.w0".parse::<QueueId>().map(QueueId::index), Ok(43));
        assert_eq!("mem.e0".parse::<QueueId>().map(QueueId::index), Ok(44));
        assert_eq!("vxm.0".parse::<QueueId>().map(QueueId::index), Ok(88));
        assert_eq!("mxm.3".parse::<QueueId>().map(QueueId::index), Ok(107));
        assert_eq!("sxm.e".parse::<QueueId>().map(QueueId::index), Ok(109));
        for bad in [
            "mem.w44", "mem.x1", "vxm.16", "vxm.01", "mxm.4", "sxm.n", "alu.0", "vxm", "",
            "c2c.16", "c2c.01",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad}");
        }
        assert_eq!(QueueId::from_index(QUEUE_COUNT), None);
    }

    #[test]
    fn units_and_hemispheres() {
        let q = |s: &str| s.parse::<QueueId>().expect("valid name");
        assert_eq!(q("mem.w3").unit(), Unit::Mem);
        assert!(q("vxm.2").accepts(Unit::Control));
        assert!(!q("vxm.2").accepts(Unit::Mem));
        assert_eq!(q("mxm.1").hemisphere(), Some(Hemisphere::West));
        assert_eq!(q("mxm.2").hemisphere(), Some(Hemisphere::East));
        assert_eq!(q("vxm.15").hemisphere(), None);
    }
}
