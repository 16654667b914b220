"""A version's life after registration: evaluation and its gate, compression, progressive
rollout on outcomes, and input drift."""
