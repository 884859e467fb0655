"""Task-free helpers below every other package: safe checkpoint files (weights-only loads, atomic saves), the
inference spec record (:mod:`vitkit.utils.spec`) and building objects from configs."""
