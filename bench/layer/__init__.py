"""The MoE layer under test: presets (model shapes), workloads (skews, tokens, weights) and the forward pass."""
