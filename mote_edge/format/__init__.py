"""The .mote file format: one self-describing file (docs/FORMAT.md). numpy only."""

from .constants import VERSION_MAJOR, VERSION_MINOR
from .reader import MoteFile
from .writer import MoteWriter

__all__ = ["MoteFile", "MoteWriter", "VERSION_MAJOR", "VERSION_MINOR"]
