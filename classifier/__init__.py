"""The library behind the pipeline's stages: one module per concern (README.md, "Where to change what")."""
