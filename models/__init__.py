"""Training: point-in-time training sets from event logs, scikit-learn models, ONNX export."""
