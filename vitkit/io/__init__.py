"""The checkpoint and inference contract: :func:`~vitkit.io.load.load` (``vitkit.load``) reads a Lightning checkpoint,
a safetensors export or an imported format (official DETR weights) into an inference spec (:mod:`vitkit.utils.spec`)
and weights, and :func:`~vitkit.io.load.build_predictor` builds every predictor from them; :mod:`vitkit.io.export`
writes ONNX graphs (:mod:`vitkit.io.onnx_export`) and safetensors exports. Both look tasks up in the registration
(:mod:`vitkit.tasks`) and name none."""
