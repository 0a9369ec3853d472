//! model.toml schema, LLaMA-family architecture and target descriptions.
