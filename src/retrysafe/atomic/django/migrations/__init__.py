"""The migration that creates the record tables (Django finds it by this package's name)."""

__all__: list[str] = []
