"""Training and evaluation of YOLO-style detectors (see models/detection)."""
