"""Configuration: the pydantic model, the YAML loader and the generated JSON Schema."""
