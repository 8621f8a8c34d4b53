"""mote_edge.runtime: loads a .mote file and generates under a memory budget.

numpy + mote_edge._native only: this package must never import torch (a device has no torch).
"""
