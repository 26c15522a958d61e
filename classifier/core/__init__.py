"""What every stage shares, without TensorFlow: params and their typed models, one-line errors, safe file writes."""
