"""Torch-free runtimes for exported artifacts: numpy, onnxruntime or tensorrt (imported lazily),
tokenizers and pillow only. Nothing here imports torch, diffusers, transformers or
`qsched_export`, so a Jetson with only `qsched-export[runtime]` runs and checks artifacts."""
