"""Long structure fuzzing of .mote metadata (`make fuzz`; not run in CI): the mutations of
tests/test_fuzz_structure.py (structural, with data CRCs recomputed, consistent config changes) on
both tiny models for a given number of minutes, from a seed that differs per run unless given.

Every case that raises anything but a one-line MoteError is saved to tests/fuzz_corpus/ as JSON
(model, seed, description, the error, the edits that turn the model's metadata into the mutant's);
tests/test_fuzz_structure.py replays the corpus in CI. The data sections come from a deterministic
export, so the edits reproduce the file.

    python tests/fuzz_long.py --minutes 10 [--seed N] [--corpus tests/fuzz_corpus]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent

# run as a script (make fuzz): Python puts this folder first on the import path
from mote_mutants import (Mutator, consistent_mutant, exercise, json_diff, metadata_of,  # noqa: E402
                          with_data_crcs, with_metadata)

MODELS = {"tiny": ("ternary", 1, "fp32"), "tiny-fp": ("fp", 2, "bf16")}  # as tests/conftest.py synthesizes them
IMAGE = HERE.parent / "examples" / "images" / "shapes.png"


def export_models(workdir: Path) -> dict[str, bytes]:
    """The two tiny models at 4 bits, exactly as the CI fixtures build them."""
    from mote_edge.exporters.export import ExportOptions, export_checkpoint
    from mote_edge.exporters.synth import synthesize_preset

    out = {}
    for name, (expert_type, seed, dtype) in MODELS.items():
        ckpt = workdir / name
        synthesize_preset("tiny", ckpt, expert_type=expert_type, seed=seed, dtype=dtype, progress=False)
        export_checkpoint(ckpt, workdir / f"{name}.mote", ExportOptions(bits=4, progress=False))
        out[name] = (workdir / f"{name}.mote").read_bytes()
    return out


def mutant(source: bytes, base: dict, mutator: Mutator, seed: int) -> tuple[str, dict] | None:
    rng = random.Random(seed)
    kind = rng.choice(("structure", "structure", "data_crcs", "consistent"))
    if kind == "consistent":
        return consistent_mutant(source, base, rng)
    description, meta = mutator.mutant(rng, rng.choice((1, 1, 2, 3, 4)))
    if kind == "data_crcs":
        return description + " (data CRCs recomputed)", with_data_crcs(source, meta)
    return description, meta


def save(corpus: Path, model: str, name: str, description: str, base: dict, meta: dict, error: str) -> Path:
    corpus.mkdir(parents=True, exist_ok=True)
    path = corpus / f"{model}-{name}.json"
    path.write_text(json.dumps({"model": model, "description": description, "error": error,
                                "edits": json_diff(base, meta)}, separators=(",", ":")) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    ap.add_argument("--corpus", type=Path, default=HERE / "fuzz_corpus")
    args = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # garbage data computes NaN: expected
    first = args.seed if args.seed is not None else int(time.time()) * 1000
    with tempfile.TemporaryDirectory(prefix="mote-fuzz-") as tmp:
        work = Path(tmp)
        sources = export_models(work)
        bases = {m: metadata_of(s) for m, s in sources.items()}
        mutators = {m: Mutator(b) for m, b in bases.items()}
        deadline = time.monotonic() + 60 * args.minutes
        seed, cases, found = first, 0, 0
        while time.monotonic() < deadline:
            model = "tiny" if seed % 3 else "tiny-fp"
            case = mutant(sources[model], bases[model], mutators[model], seed)
            if case is not None:
                description, meta = case
                path = work / "case.mote"
                path.write_bytes(with_metadata(sources[model], meta))
                try:
                    message = exercise(path, IMAGE if seed % 10 == 0 else None,
                                       expert_layout="file" if seed % 2 else "auto")
                    if message is not None and "\n" in message:
                        raise AssertionError(f"multi-line error {message!r}")
                except Exception as e:  # noqa: BLE001  (the finding)
                    where = traceback.extract_tb(e.__traceback__)[-1]
                    error = f"{type(e).__name__}: {str(e)[:200]} at {where.filename}:{where.lineno}"
                    saved = save(args.corpus, model, f"seed{seed}", description, bases[model], meta, error)
                    print(f"seed {seed} [{description}]: {error} -> {saved}", flush=True)
                    found += 1
                cases += 1
            seed += 1
    print(f"{cases} cases from seed {first} in {args.minutes} min: {found} saved to {args.corpus}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
