"""inference_utils."""
