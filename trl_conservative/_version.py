"""The package's version, written here only: pyproject.toml reads it (setuptools `dynamic`), `__version__` re-exports it."""

__all__ = ["__version__"]

__version__ = "0.1.0"
