"""mote_edge.exporters: the torch side (checkpoint loading, the reference model, PTQ, writing .mote).

Needs the `[export]` extra (torch). Nothing in mote_edge.runtime may import from here.
"""
