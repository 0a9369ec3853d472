//! Builds the transformer dataflow graph (petgraph) from a model.toml.
