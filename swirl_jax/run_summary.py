"""The console summary of a run: one line per stage, printed by ``python -m swirl_jax.main`` (the whole
summary goes to WORKDIR/summary.json)."""

from __future__ import annotations


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.0f}%"


def summary_lines(summary: dict) -> list[str]:
  """One line per stage of a pipeline (or single-mode) summary, for people; the JSON has the rest."""
  lines = []
  for name in ("generate", "label", "filter", "train", "eval", "export"):
    s = summary.get(name)
    if s is None:
      continue
    secs = summary.get(name + "_seconds")
    head = f"  {name:<9}{'' if secs is None else f'{secs:>7.0f} s'}  "
    if not isinstance(s, dict):
      lines.append(head + str(s))
    elif name == "generate":
      ends = ", ".join(f"{k} {v}" for k, v in sorted(s.get("end_reasons", {}).items()))
      lines.append(head + f"{s.get('written_now', 0)} trajectories written, {s.get('mean_steps', 0):.2f} steps "
                   f"each on average (ended by: {ends}) -> {s.get('trajectories_file')}")
    elif name == "label":
      lines.append(head + f"{s.get('steps_judged', 0)} steps judged ({_pct(s.get('process_good_rate'))} GOOD), "
                   f"{s.get('outcomes_judged', 0)} answers ({_pct(s.get('outcome_good_rate'))} correct) by "
                   f"{s.get('judge')}")
    elif name == "filter":
      f, d = s.get("filter", {}), s.get("decompose", {})
      why = ", ".join(f"{k} {v}" for k, v in sorted(f.get("reason_counts", {}).items())) or "none dropped"
      lines.append(head + f"{f.get('strategy')}: kept {f.get('kept')} of {f.get('total')} trajectories ({why}); "
                   f"{d.get('examples')} step examples")
    elif name == "train":
      r0, r1 = s.get("first_mean_reward"), s.get("last_mean_reward")
      reward = "" if r0 is None else f", mean reward {r0:.3f} (first step) -> {r1:.3f} (last)"
      lines.append(head + f"{s.get('steps_run')} steps run, at step {s.get('final_step')}{reward}"
                   + (" (interrupted)" if s.get("interrupted") else ""))
    elif name == "eval":
      for ds, rep in sorted((s.get("base") or {}).items()):
        lines.append(head + f"base on {ds}: judged accuracy {_pct(rep.get('judged_accuracy'))} over "
                     f"{rep.get('num_questions')} questions")
        head = " " * len(head)
    elif name == "export":
      lines.append(head + f"Hugging Face directory {s.get('export_dir')}")
  if "total_seconds" in summary:
    lines.append(f"  {'total':<9}{summary['total_seconds']:>7.0f} s")
  return lines
