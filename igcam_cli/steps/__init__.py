"""One module per CLI step; each exposes a config dataclass and a plain function."""
