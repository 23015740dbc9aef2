"""The exporter: a calibrated few-step pipeline -> static unrolled ONNX graphs with baked
constants and Q/DQ (or MatMulNBits), golden parity data, tokenizer and manifest."""

from qsched_export.export.api import ExportConfig, export_artifact

__all__ = ["ExportConfig", "export_artifact"]
