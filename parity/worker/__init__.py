"""Code that runs inside an engine's own Python environment (standard library, torch, safetensors)."""
