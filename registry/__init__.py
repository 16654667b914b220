"""The registry: which model versions exist, their artifacts, aliases, tokens and audit trail."""
