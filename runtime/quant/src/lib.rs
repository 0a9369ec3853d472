//! The Q35 3.5-bit weight format, its integer semantics and quantizers.
