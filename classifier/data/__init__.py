"""From a URL to .npz splits, without TensorFlow: download, safe archives, dataset layouts, image decoding."""
