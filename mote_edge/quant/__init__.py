"""Quantizer maths shared by the exporter and the runtime (numpy only)."""
