"""The package version, in a leaf module so engine code can record it without importing the package root."""

__version__ = "0.1.0"
