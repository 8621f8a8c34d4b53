"""`mote-edge verify`: every checksum and zero padding. The structure (types, directory, config,
recipe, sizes) was validated when the file was opened (mote_edge/format/validate.py)."""

from __future__ import annotations

from mote_edge.progress import byte_progress

from .reader import MoteFile


def verify_file(f: MoteFile, progress: bool = False) -> int:
    """Raise FormatError on the first problem; return the number of items checked."""
    total = f.header.file_size
    count = 0
    with byte_progress(f"verifying {f.name}", total, progress) as bar:
        for _, nbytes in f.iter_data_checks():
            count += 1
            bar.advance(nbytes)
    return count
