"""Utilities: sample files (`video`), metrics and progress (`logging`), entry-point errors (`cli`),
JAX's persistent compilation cache for the entry points (`compile_cache`)."""
