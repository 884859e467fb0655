"""CPU fast paths over plain torch: prepacked oneDNN linears, fused pointwise MLP, bf16 matmul attention,
BatchNorm folding and inference precision. They import nothing else from vitkit; the layers call them."""
