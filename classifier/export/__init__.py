"""Shipping the model: SavedModel, LiteRT and ONNX files, their parity with Keras, and loading any of them."""
