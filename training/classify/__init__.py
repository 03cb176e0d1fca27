"""Transfer learning for image classification: data, fit loop, evaluation."""
