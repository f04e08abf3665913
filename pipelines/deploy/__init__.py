"""Deploying a fine-tuned model: `electra export` (ONNX, fp32 or int8) and the onnxruntime-only classifier.

Nothing is imported here: pipelines.deploy.onnx_classifier must load where torch is not installed."""
