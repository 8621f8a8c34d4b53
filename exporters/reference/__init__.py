"""The torch reference model of MoTE-LLaVA: the numerical ground truth for exporter and runtime."""

from .model import MoTELlavaForCausalLM, load_reference_model

__all__ = ["MoTELlavaForCausalLM", "load_reference_model"]
