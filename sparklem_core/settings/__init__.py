"""Configuration: the processor's config file, declared plugin settings and secret masking."""
