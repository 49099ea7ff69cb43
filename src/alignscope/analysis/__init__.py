"""White-box analyses: per-token KL between models, safety layers."""
