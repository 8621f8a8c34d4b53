"""`mote-edge verify`: every checksum, zero padding, and the structural invariants of a file."""

from __future__ import annotations

from mote_edge.errors import FormatError
from mote_edge.progress import byte_progress
from mote_edge.schema import checkpoint_tensors

from .reader import MoteFile
from .stats import size_stats

VISION_ROLES = ("vision", "projector")


def check_structure(f: MoteFile) -> None:
    """The directory matches the model config's schema and the recipe; the stored sizes add up."""
    fail = lambda what: FormatError(f"{f.name}: {what}")  # noqa: E731
    want_resident = {}
    want_experts: dict[tuple[int, int], dict[str, tuple]] = {}
    for spec in checkpoint_tensors(f.config):
        if spec.role in VISION_ROLES:
            continue
        if spec.expert is None:
            want_resident[spec.name] = spec
        else:
            proj = spec.name.rsplit(".", 2)[-2]
            want_experts.setdefault((spec.layer, spec.expert), {})[proj] = spec
    missing = sorted(set(want_resident) - set(f.tensors))
    extra = sorted(set(f.tensors) - set(want_resident))
    if missing or extra:
        raise fail(f"tensor directory does not match the model config "
                   f"({'missing ' + missing[0] if missing else 'unexpected ' + extra[0]})")
    for name, spec in want_resident.items():
        t = f.tensors[name]
        if t.shape != spec.shape or t.role != spec.role:
            raise fail(f"tensor {name} has shape {list(t.shape)} / role {t.role}, expected "
                       f"{list(spec.shape)} / {spec.role}")
        if t.scheme != f.recipe.scheme_for(t.role):
            raise fail(f"tensor {name} is stored as {t.scheme.label}, but the recipe says "
                       f"{f.recipe.scheme_for(t.role).label}")
    if set(want_experts) != set(f.experts):
        diff = sorted(set(want_experts) ^ set(f.experts))[0]
        raise fail(f"expert directory does not match the model config (expert {diff})")
    for key, projs in want_experts.items():
        got = {t.name: t for t in f.experts[key].tensors}
        for proj, spec in projs.items():
            if proj not in got or got[proj].shape != spec.shape or got[proj].scheme != f.recipe.scheme_for(spec.role):
                raise fail(f"expert {key} tensor {proj} does not match the model config or recipe")
    if f.metadata.get("sizes") != size_stats(f.tensors.values(), f.experts.values(), f.vision):
        raise fail("stored size statistics do not match the directory")


def verify_file(f: MoteFile, progress: bool = False) -> int:
    """Raise FormatError on the first problem; return the number of items checked."""
    check_structure(f)
    total = f.header.file_size
    count = 0
    with byte_progress(f"verifying {f.name}", total, progress) as bar:
        for _, nbytes in f.iter_data_checks():
            count += 1
            bar.advance(nbytes)
    return count
