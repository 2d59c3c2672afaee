"""The click CLI: one module per command group, shared helpers in _common."""
