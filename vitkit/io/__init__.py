"""The checkpoint and inference contract: what a checkpoint or export holds, and :func:`load`, which builds every
predictor from a Lightning checkpoint, a safetensors export or official DETR weights."""
