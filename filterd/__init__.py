"""filterd: a filtering DNS resolver proxy for homes and schools."""

__version__ = "0.1.0"
