"""pyconmon: a container monitor compatible with conmon, in Python."""

__version__ = "0.1.0"
CONTRACT_VERSION = "2.2.1"
