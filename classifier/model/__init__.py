"""The Keras MLP: TensorFlow's seeds and threads, building and compiling it, byte-stable .keras files, and
refusing model files that are not safe."""
