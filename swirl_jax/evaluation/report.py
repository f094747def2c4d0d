"""Evaluation reports on disk (one JSON file per dataset) and the base-versus-trained table."""

from __future__ import annotations

import decimal
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


def _count(value: Any) -> str:
  return str(value) if isinstance(value, int) else "-"


def comparison_table(base: Mapping[str, Mapping[str, Any]], trained: Mapping[str, Mapping[str, Any]],
                     columns: Sequence[tuple[str, str, bool]] = DEFAULT_COLUMNS) -> str:
  """A Markdown table, one row per dataset: each metric as ``base -> trained (+delta)``.

  Fractions are shown in percent (deltas in points). The delta is the difference of the two numbers as
  printed, so a row adds up ("33.3 -> 66.7 (+33.4)"). n is the number of trajectories, one number when
  both sides have the same, else ``base -> trained`` (then the two sides' metrics are means over
  different trajectories). Datasets present on one side only show "-" on the other.
  """
  head = "| dataset | n | " + " | ".join(title for _, title, _ in columns) + " |"
  rule = "|---|---|" + "---|" * len(columns)
  lines = [head, rule]
  for ds in sorted(set(base) | set(trained)):
    b, t = base.get(ds, {}), trained.get(ds, {})
    bn, tn = _count(b.get("num_trajectories")), _count(t.get("num_trajectories"))
    n = bn if bn == tn else f"{bn} -> {tn}"
    cells = []
    for key, _, pct in columns:
      bs, ts = _fmt(b.get(key), pct), _fmt(t.get(key), pct)
      cell = f"{bs} -> {ts}"
      if "-" not in (bs, ts):
        d = decimal.Decimal(ts) - decimal.Decimal(bs)  # (exact: 66.7 - 33.3 is 33.4, not 33.400000000000006)
        cell += f" ({d:+.1f})" if pct else f" ({d:+.2f})"
      cells.append(cell)
    lines.append(f"| {ds} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
