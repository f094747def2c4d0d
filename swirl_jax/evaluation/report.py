"""Evaluation reports on disk (one JSON file per dataset) and the base-versus-trained table."""

from __future__ import annotations

import json
import os
from typing import Any, Collection, Mapping, Sequence

from swirl_jax.atomic_io import atomic_open

# (report key, column title, is a fraction shown as a percentage)
DEFAULT_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("judged_accuracy", "judged acc", True),
    ("exact_match", "EM", True),
    ("token_f1", "F1", True),
    ("mean_steps", "steps", False),
    ("mean_tool_calls", "tool calls", False),
)


def write_report(path: str, report: Mapping[str, Any]) -> None:
  """Writes one dataset's report as indented JSON (atomically: temp file + rename)."""
  with atomic_open(path) as f:
    json.dump(dict(report), f, indent=1, sort_keys=True)
    f.write("\n")


def read_report(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_reports(directory: str, datasets: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
  """dataset -> report for every ``*.json`` report in ``directory`` (as ``evaluate`` writes them), or only
  for ``datasets`` (file names without .json: the datasets of this run, not reports an earlier run left)."""
  out = {}
  if not os.path.isdir(directory):
    return out
  for name in sorted(os.listdir(directory)):
    if name.endswith(".json") and (datasets is None or name[:-len(".json")] in datasets):
      rep = read_report(os.path.join(directory, name))
      if "dataset" in rep:
        out[rep["dataset"]] = rep
  return out


def _fmt(value: Any, pct: bool) -> str:
  if not isinstance(value, (int, float)):
    return "-"
  return f"{100 * value:.1f}" if pct else f"{value:.2f}"


def comparison_table(base: Mapping[str, Mapping[str, Any]], trained: Mapping[str, Mapping[str, Any]],
                     columns: Sequence[tuple[str, str, bool]] = DEFAULT_COLUMNS) -> str:
  """A Markdown table, one row per dataset: each metric as ``base -> trained (+delta)``.

  Fractions are shown in percent (deltas in points). Datasets present on one side only show "-" on the
  other.
  """
  head = "| dataset | n | " + " | ".join(title for _, title, _ in columns) + " |"
  rule = "|---|---|" + "---|" * len(columns)
  lines = [head, rule]
  for ds in sorted(set(base) | set(trained)):
    b, t = base.get(ds, {}), trained.get(ds, {})
    n = t.get("num_trajectories", b.get("num_trajectories", "-"))
    cells = []
    for key, _, pct in columns:
      bv, tv = b.get(key), t.get(key)
      cell = f"{_fmt(bv, pct)} -> {_fmt(tv, pct)}"
      if isinstance(bv, (int, float)) and isinstance(tv, (int, float)):
        d = (tv - bv) * (100 if pct else 1)
        cell += f" ({d:+.1f})" if pct else f" ({d:+.2f})"
      cells.append(cell)
    lines.append(f"| {ds} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
