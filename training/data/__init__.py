"""Data set builders: Fashion-MNIST as an ImageFolder tree and the synth-detect YOLO set."""
