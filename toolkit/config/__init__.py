"""Typed configuration: dataclass schemas, command-line parsing and validation."""
