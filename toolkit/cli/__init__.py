"""Command-line entry points: thin wrappers that parse, validate, run and map errors to exit codes."""
