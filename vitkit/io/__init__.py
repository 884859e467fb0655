"""The checkpoint and inference contract: loading (:mod:`vitkit.io.load`, ``vitkit.load``) and exports
(:mod:`vitkit.io.export`)."""
