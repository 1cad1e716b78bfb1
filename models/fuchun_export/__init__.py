"""fuchun's model exporter: VGG weights -> ONNX feature and objective graphs + manifest.json."""
__version__ = "0.1.0"
