"""emlive.export: ONNX/TensorRT export and the inference runtime every consumer uses."""
