"""GPU memory of a real-size ColQwen2 deployment, computed from the graphs: weight bytes and activation peaks.

    python -m bench.memory                 # writes bench/results/memory-real.{json,md}

A deployment loads, per precision, one encoder process (`colqwen2_encoder_<variant>`) holding the
vision and the text graph, each in its own ONNX Runtime session. Its GPU memory is weights + the
activations of the calls in flight + the runtime's own (CUDA context, library handles and
workspaces). Nothing here needs a GPU or the 2.2 B-parameter export:

- Weight bytes, exact: the real-size ColQwen2 is built on the `meta` device (no memory), the two
  graph modules are built over it, a forward on meta tensors records which parameters and
  buffers each graph reads, and the export rules give each one's bytes per variant (fp32; fp16:
  every nn.Linear / nn.Embedding weight and bias in float16, norms float32; int8 QDQ and dynamic:
  weight matmuls int8 with float32 scales and int8 zero points, per channel (QDQ) or per tensor
  (dynamic), biases float32, a token embedding of 1e6 elements or more in float16). The rules are
  checked against a real export of the tiny checkpoint (tests/test_memory.py).
- Activation peaks, from the graph's tensor shapes: a slice of the real architecture (real widths,
  2 vision blocks, 2 text layers, a small vocabulary, random weights) is exported per variant with the
  exporter's own code; for concrete input shapes every tensor's shape comes from ONNX Runtime's symbolic
  shape inference, and execution is simulated in node order (a tensor is allocated when produced and
  freed after its last consumer; reshape-like ops are views; graph inputs are live throughout; weights
  are excluded). Per-layer activations do not depend on the layer count: what crosses layers is the
  residual stream and the tables computed once before the first layer and read by every layer (rotary
  cos/sin, the attention bias). Those stay live until the last layer, which a 1-layer graph reaches at
  once, so the slice has 2 layers; the run checks that 1, 2 and 3 layers give the same peak from 2 on.

The peak is an upper bound for an unfused runtime (ONNX Runtime's CPU and CUDA providers, whose
memory planner reuses a buffer only after its last consumer). TensorRT fuses attention and plans
its own memory, so it needs less; the `fused attention` column estimates that by not
materialising the attention score chain (QK^T through softmax), and is an estimate, not a bound.

The modules: `model` (the configuration and the graph modules over it), `weights` (tracing and weight bytes),
`activations` (shape inference and the liveness simulation), `slices` (the slice export), `budgets` (the calls,
the GPU budgets and the deployments), `report` (the Markdown), `cli` (the run and its command line).
"""
