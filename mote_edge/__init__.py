"""mote-edge: run Mixture-of-Ternary-Experts vision-language models on edge devices.

`mote_edge` holds what the exporter and the runtime share (numpy only): configs, the tensor
schema, quantizer maths, the text and image front-end and the CLI. torch lives only under
`mote_edge.exporters`; the runtime (`mote_edge.runtime`) never imports it.
"""

__version__ = "0.1.0"
