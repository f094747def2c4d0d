"""The base-versus-trained comparison table: n per side, and deltas that add up as printed."""

from __future__ import annotations

from swirl_jax.evaluation.report import comparison_table

COLUMNS = (("judged_accuracy", "judged acc", True), ("mean_steps", "steps", False))


def _rows(base, trained):
  return comparison_table(base, trained, COLUMNS).splitlines()[2:]


def test_n_shows_both_sides_when_they_differ():
  """100 base trajectories against 20 trained ones are not one n (the old table printed 20)."""
  base = {"a": {"num_trajectories": 100, "judged_accuracy": 0.5}, "b": {"num_trajectories": 7},
          "c": {"num_trajectories": 3}}
  trained = {"a": {"num_trajectories": 20, "judged_accuracy": 0.25}, "b": {"num_trajectories": 7},
             "d": {"num_trajectories": 10}}
  assert _rows(base, trained) == [
      "| a | 100 -> 20 | 50.0 -> 25.0 (-25.0) | - -> - |",
      "| b | 7 | - -> - | - -> - |",
      "| c | 3 -> - | - -> - | - -> - |",
      "| d | - -> 10 | - -> - | - -> - |",
  ]


def test_deltas_are_the_difference_of_the_printed_numbers():
  """33.33% -> 66.67% prints 33.3 -> 66.7, so +33.4 (the unrounded difference, 33.33, printed +33.3);
  12.345 -> 12.355 prints 12.3 -> 12.4, so +0.1 (not +0.0); steps 2.004 -> 2.996 print 2.00 -> 3.00, so
  +1.00 (not +0.99)."""
  base = {"a": {"num_trajectories": 3, "judged_accuracy": 1 / 3, "mean_steps": 2.004},
          "b": {"num_trajectories": 4, "judged_accuracy": 0.12345, "mean_steps": 1.0}}
  trained = {"a": {"num_trajectories": 3, "judged_accuracy": 2 / 3, "mean_steps": 2.996},
             "b": {"num_trajectories": 4, "judged_accuracy": 0.12355, "mean_steps": 1.0}}
  assert _rows(base, trained) == [
      "| a | 3 | 33.3 -> 66.7 (+33.4) | 2.00 -> 3.00 (+1.00) |",
      "| b | 4 | 12.3 -> 12.4 (+0.1) | 1.00 -> 1.00 (+0.00) |",
  ]


def test_the_default_columns_head_the_table():
  lines = comparison_table({"a": {"num_trajectories": 1}}, {"a": {"num_trajectories": 1}}).splitlines()
  assert lines[:2] == ["| dataset | n | judged acc | EM | F1 | steps | tool calls |",
                       "|---|---|---|---|---|---|---|"]
