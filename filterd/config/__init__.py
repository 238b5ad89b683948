"""Configuration: the frozen schema and the YAML loader that builds it."""

from filterd.config.load import load_config, load_embedded, parse_config
from filterd.config.schema import Config

__all__ = ["Config", "load_config", "load_embedded", "parse_config"]
