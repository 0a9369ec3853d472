//! A system of chips joined by chip-to-chip links (docs/target.md,
//! "Systems"): which link of which chip reaches which chip, the route
//! between two chips and how many link hops (and cycles) it takes.
//!
//! The topology is the published one (lpu.md, multi-chip): nodes of
//! `c2c.chips_per_node` chips, fully connected, and nodes joined as a
//! Dragonfly. The wiring is q35's (ASSUMED; the real cabling is not
//! public), fixed so that the compiler and the simulator agree on it:
//!
//! - Chip `c` is chip `k = c mod chips_per_node` of node `c / chips_per_node`.
//! - Links `0 .. chips_per_node - 1` are the node's **local** links: local
//!   link `j` of chip `k` reaches chip `(k + 1 + j) mod chips_per_node` of
//!   the same node (arriving on its local link `(k - k' - 1) mod
//!   chips_per_node`).
//! - Links `chips_per_node - 1 ..` (`c2c.global_links_per_chip` of them) are
//!   **global**: with `M` nodes, global link `g` of chip `k` in node `x` is
//!   the node's global port `i = k * global_links_per_chip + g`; if `i < M -
//!   1` it reaches node `y = (x + 1 + i) mod M`, arriving on that node's
//!   port `M - 2 - i` (the same rule seen from `y`), else it is unused.
//!   Every pair of nodes is joined by one global link, so a system holds at
//!   most `chips_per_node * global_links_per_chip + 1` nodes.
//! - A route is minimal Dragonfly routing: within a node one hop; between
//!   nodes a local hop to the chip holding the global link (unless the
//!   source holds it), the global hop, and a local hop to the destination
//!   (unless the link lands on it): at most 3 hops. Every hop costs
//!   `c2c.link_latency_cycles` when each intermediate chip forwards the
//!   vector (`fwd`) on the cycle it arrives.
//!
//! A system of fewer chips than a node is one partial node (links to
//! absent chips are unused); a larger one is whole nodes.

use crate::Target;

/// One end of a link: a chip and one of its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkEnd {
    /// The chip, `0 .. chips`.
    pub chip: u32,
    /// The link, `0 .. c2c.links_per_chip`.
    pub link: u32,
}

/// One hop of a route: out of `from` (a chip's link), into `to` (the
/// neighbour's end of the same link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The sending chip and the link it sends on.
    pub from: LinkEnd,
    /// The receiving chip and the link the vector arrives on.
    pub to: LinkEnd,
}

/// A system that cannot be built, or a chip or link it does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemError {
    /// Zero chips.
    #[error("a system needs at least one chip")]
    NoChips,
    /// More chips than one node, but not whole nodes.
    #[error(
        "{chips} chips are not whole nodes of c2c.chips_per_node = {per_node} (a system of more than one node is whole nodes)"
    )]
    PartialNode {
        /// Chips asked for.
        chips: u32,
        /// `c2c.chips_per_node`.
        per_node: u32,
    },
    /// More nodes than the global links join pairwise.
    #[error(
        "{chips} chips are {nodes} nodes; c2c.chips_per_node x c2c.global_links_per_chip + 1 = {per_node} x {global} + 1 = {max_nodes} nodes at most are joined pairwise"
    )]
    TooManyNodes {
        /// Chips asked for.
        chips: u32,
        /// Nodes that makes.
        nodes: u32,
        /// The most nodes.
        max_nodes: u32,
        /// `c2c.chips_per_node`.
        per_node: u32,
        /// `c2c.global_links_per_chip`.
        global: u32,
    },
    /// A chip number past the system.
    #[error("chip {chip} is not in the system (chips 0..{chips})")]
    NoChip {
        /// The chip.
        chip: u32,
        /// Chips in the system.
        chips: u32,
    },
    /// A link number past the chip's links.
    #[error("link {link} is not a link of a chip (links 0..{links})")]
    NoLink {
        /// The link.
        link: u32,
        /// `c2c.links_per_chip`.
        links: u32,
    },
}

/// The links of a system of `chips` chips of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemTopology {
    chips: u32,
    per_node: u32,
    global: u32,
    links: u32,
    nodes: u32,
    latency: u32,
}

/// What a link of a chip is in a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Joins two chips of one node.
    Local,
    /// Joins two nodes.
    Global,
    /// Reaches no chip of this system.
    Unused,
}

impl Target {
    /// The system of `chips` chips of this target (module doc of
    /// `system`: nodes of `c2c.chips_per_node`, a one-level Dragonfly).
    pub fn system(&self, chips: u32) -> Result<SystemTopology, SystemError> {
        let c = &self.c2c;
        let per_node = c.chips_per_node;
        if chips == 0 {
            return Err(SystemError::NoChips);
        }
        let nodes = if chips <= per_node {
            1
        } else if chips.is_multiple_of(per_node) {
            chips / per_node
        } else {
            return Err(SystemError::PartialNode { chips, per_node });
        };
        let max_nodes = u64::from(per_node) * u64::from(c.global_links_per_chip) + 1;
        if u64::from(nodes) > max_nodes {
            return Err(SystemError::TooManyNodes {
                chips,
                nodes,
                max_nodes: u32::try_from(max_nodes).unwrap_or(u32::MAX),
                per_node,
                global: c.global_links_per_chip,
            });
        }
        Ok(SystemTopology {
            chips,
            per_node,
            global: c.global_links_per_chip,
            links: c.links_per_chip,
            nodes,
            latency: c.link_latency_cycles,
        })
    }
}

impl SystemTopology {
    /// Chips in the system.
    pub fn chips(&self) -> u32 {
        self.chips
    }

    /// Nodes in the system (a partial node counts as one).
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Links per chip.
    pub fn links_per_chip(&self) -> u32 {
        self.links
    }

    /// The node a chip is in.
    pub fn node_of(&self, chip: u32) -> u32 {
        chip / self.per_node
    }

    fn local_links(&self) -> u32 {
        self.per_node - 1
    }

    fn check(&self, end: LinkEnd) -> Result<(), SystemError> {
        if end.chip >= self.chips {
            return Err(SystemError::NoChip {
                chip: end.chip,
                chips: self.chips,
            });
        }
        if end.link >= self.links {
            return Err(SystemError::NoLink {
                link: end.link,
                links: self.links,
            });
        }
        Ok(())
    }

    /// What link `end.link` of chip `end.chip` is.
    pub fn kind(&self, end: LinkEnd) -> Result<LinkKind, SystemError> {
        Ok(match self.neighbour(end)? {
            None => LinkKind::Unused,
            Some(far) if self.node_of(far.chip) == self.node_of(end.chip) => LinkKind::Local,
            Some(_) => LinkKind::Global,
        })
    }

    /// The other end of a link: the chip it reaches and the link the vector
    /// arrives on there; `None` when the link reaches no chip of the system.
    pub fn neighbour(&self, end: LinkEnd) -> Result<Option<LinkEnd>, SystemError> {
        self.check(end)?;
        let (node, k) = (end.chip / self.per_node, end.chip % self.per_node);
        let local = self.local_links();
        if end.link < local {
            let j = end.link;
            let k2 = (k + 1 + j) % self.per_node;
            let chip = node * self.per_node + k2;
            if chip >= self.chips {
                return Ok(None);
            }
            // Seen from k2, chip k is (k2 + 1 + j2) mod per_node.
            let j2 = (k + 2 * self.per_node - k2 - 1) % self.per_node;
            return Ok(Some(LinkEnd { chip, link: j2 }));
        }
        let g = end.link - local;
        if g >= self.global {
            return Ok(None);
        }
        let port = k * self.global + g;
        if port + 1 >= self.nodes {
            return Ok(None);
        }
        let y = (node + 1 + port) % self.nodes;
        let port2 = self.nodes - 2 - port;
        let (k2, g2) = (port2 / self.global, port2 % self.global);
        Ok(Some(LinkEnd {
            chip: y * self.per_node + k2,
            link: local + g2,
        }))
    }

    /// The local link of chip `from` that reaches chip `to` of its node.
    fn local_link(&self, from: u32, to: u32) -> u32 {
        let (k, k2) = (from % self.per_node, to % self.per_node);
        (k2 + 2 * self.per_node - k - 1) % self.per_node
    }

    /// The hops from chip `from` to chip `to` (empty when they are the
    /// same chip; module doc: at most 3).
    pub fn route(&self, from: u32, to: u32) -> Result<Vec<Hop>, SystemError> {
        for chip in [from, to] {
            self.check(LinkEnd { chip, link: 0 })?;
        }
        let mut hops = Vec::new();
        let hop = |from: LinkEnd| -> Result<Hop, SystemError> {
            let to = self.neighbour(from)?.ok_or(SystemError::NoLink {
                link: from.link,
                links: self.links,
            })?;
            Ok(Hop { from, to })
        };
        if from == to {
            return Ok(hops);
        }
        let (x, y) = (self.node_of(from), self.node_of(to));
        if x == y {
            hops.push(hop(LinkEnd {
                chip: from,
                link: self.local_link(from, to),
            })?);
            return Ok(hops);
        }
        let port = (y + self.nodes - x - 1) % self.nodes;
        let gateway = x * self.per_node + port / self.global;
        if gateway != from {
            hops.push(hop(LinkEnd {
                chip: from,
                link: self.local_link(from, gateway),
            })?);
        }
        let global = hop(LinkEnd {
            chip: gateway,
            link: self.local_links() + port % self.global,
        })?;
        let landing = global.to.chip;
        hops.push(global);
        if landing != to {
            hops.push(hop(LinkEnd {
                chip: landing,
                link: self.local_link(landing, to),
            })?);
        }
        Ok(hops)
    }

    /// Link hops from chip `from` to chip `to`.
    pub fn hops(&self, from: u32, to: u32) -> Result<u32, SystemError> {
        Ok(self.route(from, to)?.len() as u32)
    }

    /// Cycles from a `send` on `from` to the vector's arrival at `to` when
    /// every intermediate chip forwards it on the cycle it arrives: `hops x
    /// c2c.link_latency_cycles`.
    pub fn latency_cycles(&self, from: u32, to: u32) -> Result<u64, SystemError> {
        Ok(u64::from(self.hops(from, to)?) * u64::from(self.latency))
    }
}
