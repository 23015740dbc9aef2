"""qsched-export: Q-Sched few-step samplers, exported to ONNX Runtime and TensorRT."""

__version__ = "0.1.0"
