"""Task-free helpers below every other package: safe checkpoint files (weights-only loads, atomic saves)."""
