"""Seed spread of the accuracy-vs-memory table: one markdown row per (model, precision).

    python -m mote_edge.training.summary out/train/report-seeds.jsonl [more.jsonl ...]

Reads the JSON lines that `mote_edge.training.report` writes. Rows of one model trained with
different seeds are named NAME@SEED (e.g. `mote@1=out/train-s1/mote` on the report's command
line); they are grouped by NAME and precision, and each accuracy cell shows the mean over seeds
and, with more than one seed, the range (min-max) in points.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .data import QTYPES

COLUMNS = ("all", *QTYPES)


@dataclass
class Group:
    model: str
    precision: str
    expert_bytes: int | None
    seeds: list[str] = field(default_factory=list)
    acc: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def split_name(name: str) -> tuple[str, str]:
    """'mote@2' -> ('mote', '2'); a name without '@' is seed '0'."""
    base, _, seed = name.partition("@")
    return base, seed or "0"


def group_rows(rows: list[dict]) -> list[Group]:
    """Rows in first-seen order of (model, precision); a later row for the same seed replaces an earlier one."""
    latest: dict[tuple[str, str, str], dict] = {}
    for row in rows:
        base, seed = split_name(row["model"])
        latest[(base, row["precision"], seed)] = row
    groups: dict[tuple[str, str], Group] = {}
    for (base, precision, seed), row in latest.items():
        g = groups.setdefault((base, precision), Group(base, precision, row.get("expert_bytes")))
        g.seeds.append(seed)
        for col in COLUMNS:
            g.acc[col].append(100.0 * row[col])
    return list(groups.values())


def cell(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({min(values):.1f}-{max(values):.1f})"


def markdown(groups: list[Group]) -> str:
    lines = ["| model | precision | seeds | expert bytes | " + " | ".join(COLUMNS) + " |",
             "|---|---|---:|---:|" + "---:|" * len(COLUMNS)]
    for g in groups:
        eb = f"{g.expert_bytes:,}" if g.expert_bytes is not None else "-"
        lines.append(f"| {g.model} | {g.precision} | {len(g.seeds)} | {eb} | "
                     + " | ".join(cell(g.acc[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="JSON-lines files written by training.report")
    args = ap.parse_args(argv)
    rows = []
    for path in args.reports:
        if not path.is_file():
            raise SystemExit(f"error: no report file {path}")
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(markdown(group_rows(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
