"""The paper-scale paths give what the plain ones give: incremental tokenization, streamed labelling with one
fsync per chunk, byte-wise shard merging, line-by-line cache loading, array rows in RL, and done_keys errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import types as pytypes

import numpy as np
import pytest

from tiny_tokenizer import tiny_tokenizer

from swirl_jax import prompts
from swirl_jax.judges import RuleJudge
from swirl_jax.judges.cache import CachedCompletion, JudgeCache
from swirl_jax.pipeline import jsonl as jsonl_module
from swirl_jax.pipeline.decompose import decompose, tokenize_each, tokenize_example, tokenize_examples
from swirl_jax.pipeline.generate import done_keys, merge_shards, shard_path
from swirl_jax.pipeline.stages import label, label_counts, read_trajectories
from swirl_jax.sampling.decode import SamplingConfig
from swirl_jax.tools.search import BM25Search, tokenize
from swirl_jax.training import rl
from swirl_jax.types import Paragraph, Question, Step, ToolCall, Trajectory, dumps, write_jsonl

TOK = tiny_tokenizer()


def calc(expr: str, result: str, text: str = "") -> Step:
  return Step(text=f"{text}<math_exp>{expr}</math_exp>", kind="tool_call", call=ToolCall("calculator", expr),
              observation=f"{expr} -> {result}")


def trajectory(qid: str, k: int, n_calls: int, answer: str | None = "7", prov: dict | None = None) -> Trajectory:
  steps = [calc(f"{i} + {k}", f"{i + k}.0", text="\nStep. " if i % 2 else "") for i in range(n_calls)]
  if answer is not None:
    steps.append(Step(text=f"So <answer>{answer}</answer> done", kind="answer", answer=answer))
  q = Question(id=qid, dataset="gsm8k", text=f"Question {qid}: what is {k} plus a few?", answer="7")
  return Trajectory(question=q, sample_index=k, steps=tuple(steps), final_answer=answer,
                    provenance=prov or {"task": "math", "num_demos": 1, "budget": 10})


# --- decompose: incremental tokenization ---------------------------------------------------------------


def mixed_examples():
  """Several trajectories with and without demonstrations, single-step ones, a repeated example, a
  reordered pair and a step whose state does not extend the previous one: the incremental path and its
  fallbacks."""
  demos = prompts.DEFAULT_DEMOS["math"]
  a = decompose(trajectory("a", 0, 4), "math", demos[:1], 10)
  b = decompose(trajectory("b", 1, 3, answer=None), "math", demos, 10)
  c = decompose(trajectory("c", 2, 0), "math", (), 5)
  d = decompose(trajectory("d", 3, 5), "math", (), 10)
  e = decompose(trajectory("e", 4, 2), "math", demos[:1], 10)
  # step 2 of e with another tool result in its state: not step 1's state plus two turns
  odd = dataclasses.replace(e[2], state=e[2].state[:-1] + (dataclasses.replace(e[2].state[-1], content="other"),))
  return a + b + c + d[:2] + [d[3], d[2]] + d[4:] + [d[4]] + e[:2] + [odd] + a[2:4]


def same(x, y) -> bool:
  if x is None or y is None:
    return x is None and y is None
  return (np.array_equal(x.tokens, y.tokens) and x.tokens.dtype == y.tokens.dtype
          and np.array_equal(x.loss_mask, y.loss_mask) and x.prompt_len == y.prompt_len
          and (x.question_id, x.sample_index, x.step_index) == (y.question_id, y.sample_index, y.step_index)
          and (x.dropped_demo_messages, x.truncated_tokens) == (y.dropped_demo_messages, y.truncated_tokens))


@pytest.mark.parametrize("policy", ["truncate_left", "drop"])
def test_incremental_tokenization_equals_tokenize_example(policy):
  examples = mixed_examples()
  lengths = sorted(len(tokenize_example(ex, TOK, 100_000)) for ex in examples)
  cut = 0
  # no cut, cuts of some (demonstrations dropped, then tokens) and of nearly all, actions too long
  for max_len in (100_000, lengths[len(lengths) // 2], lengths[0] - 5, 12):
    ref = [tokenize_example(ex, TOK, max_len, policy) for ex in examples]
    got = list(tokenize_each(examples, TOK, max_len, policy))
    assert len(got) == len(ref) and all(same(x, y) for x, y in zip(got, ref)), max_len
    out, report = tokenize_examples(examples, TOK, max_len, policy)
    kept = [r for r in ref if r is not None]
    assert len(out) == len(kept) and all(same(x, y) for x, y in zip(out, kept))
    assert report.total == len(examples) and report.kept == len(kept)
    assert report.truncated == sum(r.truncated for r in kept)
    cut += report.truncated + report.dropped_over_length
  assert cut > 0


def test_tokenization_encodes_each_trajectory_history_once(monkeypatch):
  """Step k + 1's state extends step k's: its history is not encoded again (the old path encoded every
  earlier turn once per later step, quadratic in the steps)."""
  examples = decompose(trajectory("long", 0, 9), "math", prompts.DEFAULT_DEMOS["math"][:1], 10)
  encoded = []
  real = type(TOK).encode

  def encode(self, text, add_bos=True):
    encoded.append(text)
    return real(self, text, add_bos)

  monkeypatch.setattr(type(TOK), "encode", encode)
  tokenize_examples(examples, TOK, 100_000)
  incremental = sum(map(len, encoded))
  encoded.clear()
  for ex in examples:
    tokenize_example(ex, TOK, 100_000)
  assert incremental * 2 < sum(map(len, encoded))
  opening = sum(1 for text in encoded if text.startswith("<start_of_turn>user"))
  assert opening == len(examples)  # per example, the opening is encoded once ...
  encoded.clear()
  tokenize_examples(examples, TOK, 100_000)
  assert sum(1 for text in encoded if text.startswith("<start_of_turn>user")) == 1  # ... here once in all


# --- label: streamed, one fsync per chunk ----------------------------------------------------------------


@pytest.fixture
def traj_file(tmp_path):
  trajs = [trajectory(f"q{i}", i % 3, i % 4, answer=None if i % 5 == 4 else str(7 + i % 2)) for i in range(11)]
  path = tmp_path / "trajectories.jsonl"
  write_jsonl(str(path), trajs)
  return str(path)


def test_label_fsyncs_once_per_chunk(traj_file, tmp_path, monkeypatch):
  synced = []
  real = os.fsync
  monkeypatch.setattr(jsonl_module.os, "fsync", lambda fd: synced.append(fd) or real(fd))
  seen = []
  out = str(tmp_path / "labelled.jsonl")
  summary = label(traj_file, out, RuleJudge(), chunk_size=4, on_trajectory=seen.append)
  assert summary["labelled_now"] == 11 and len(synced) == 3  # chunks of 4, 4 and 3
  assert [t.key for t in seen] == [t.key for t in read_trajectories(out)[0]]


def test_label_resumed_output_and_summary_equal_a_fresh_run(traj_file, tmp_path):
  fresh = str(tmp_path / "fresh.jsonl")
  s_fresh = label(traj_file, fresh, RuleJudge(), chunk_size=3)
  with open(fresh, encoding="utf-8") as f:
    done = f.read().split("\n")
  resumed = str(tmp_path / "resumed.jsonl")
  with open(resumed, "w", encoding="utf-8") as f:
    f.write("\n".join(done[:5]) + "\n" + done[5][:30])  # a crash: 5 whole records and a torn one
  dups = str(tmp_path / "dups.jsonl")
  with open(traj_file, encoding="utf-8") as f, open(dups, "w", encoding="utf-8") as g:
    g.write("".join(f.readlines()[2:6]))
  s = label([traj_file, dups], resumed, RuleJudge(), chunk_size=3)
  assert open(resumed, "rb").read() == open(fresh, "rb").read()
  assert s["already_labelled"] == 5 and s["labelled_now"] == 6 and s["input_duplicates"] == 4
  for k in ("input", "total_labelled", "steps_judged", "steps_good", "process_good_rate", "outcomes_judged",
            "outcomes_good", "outcome_good_rate", "all_steps_good"):
    assert s[k] == s_fresh[k], k
  assert {k: s[k] for k in label_counts([])} == label_counts(read_trajectories(fresh)[0])


def test_label_names_a_malformed_output_record(traj_file, tmp_path):
  out = tmp_path / "labelled.jsonl"
  label(traj_file, str(out), RuleJudge())
  rec = json.loads(out.read_text().splitlines()[1])
  rec["steps"][0]["verdict"] = {"score": 1.0}  # no label
  out.write_text(out.read_text().splitlines()[0] + "\n" + json.dumps(rec) + "\n")
  with pytest.raises(ValueError, match=r"labelled.jsonl:2"):
    label(traj_file, str(out), RuleJudge())


def test_label_refuses_an_output_record_with_a_label_other_than_good_or_bad(traj_file, tmp_path):
  """Read as dicts, an existing label "MAYBE" was counted as a judged, not-GOOD outcome."""
  out = tmp_path / "labelled.jsonl"
  label(traj_file, str(out), RuleJudge())
  lines = out.read_text().splitlines()
  rec = json.loads(lines[0])
  rec["outcome"]["label"] = "MAYBE"
  out.write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")
  with pytest.raises(ValueError, match=r"labelled.jsonl:1.*label"):
    label(traj_file, str(out), RuleJudge())


def test_appender_sync_false_waits_for_sync(tmp_path, monkeypatch):
  synced = []
  monkeypatch.setattr(jsonl_module.os, "fsync", synced.append)
  path = tmp_path / "x.jsonl"
  with jsonl_module.JsonlAppender(str(path)) as out:
    out.write('{"i": 0}', sync=False)
    out.write('{"i": 1}', sync=False)
    assert not synced
    out.sync()
    out.sync()  # nothing new
    assert len(synced) == 1
    out.write('{"i": 2}')  # the default: durable at once
    assert len(synced) == 2
    out.write('{"i": 3}', sync=False)
  assert len(synced) == 3  # close syncs what is pending
  assert path.read_text() == "".join(f'{{"i": {i}}}\n' for i in range(4))


# --- generate: done_keys errors, byte-wise shard merge ---------------------------------------------------


@pytest.mark.parametrize("bad", ['{"sample_index": 0, "steps": []}', "[1, 2]", '"text"',
                                 '{"question": {"text": "no id"}, "sample_index": 0}', '{"question": [], "x": 1}'])
def test_done_keys_names_the_line_of_a_record_without_a_key(tmp_path, bad):
  path = tmp_path / "trajectories.jsonl"
  path.write_text(dumps(trajectory("a", 0, 1)) + "\n" + bad + "\n")
  with pytest.raises(ValueError, match="^" + re.escape(f"{path}:2: ")):
    done_keys(str(path))


def test_done_keys(tmp_path, traj_file):
  assert done_keys(traj_file) == {t.key for t in read_trajectories(traj_file)[0]}
  assert done_keys(str(tmp_path / "missing.jsonl")) == set()


def test_merge_shards_copies_whole_lines(tmp_path):
  out = str(tmp_path / "trajectories.jsonl")
  trajs = [trajectory(f"q{i}", i, 1 + i % 3) for i in range(7)]
  # non-ASCII text is written as is (ensure_ascii=False), and copied as is
  trajs[:2] = [dataclasses.replace(t, final_answer="naïve – ünïcode") for t in trajs[:2]]
  n = 3
  for i in range(n):
    body = "".join(dumps(t) + "\n" for t in trajs[i::n])
    if i == 0:
      body += "\n" + dumps(trajectory("torn", 9, 2))[:50]  # a blank line, then a torn last line
    if i == 1:
      body = body[:-1]  # a whole last record without its newline
    with open(shard_path(out, i, n), "w", encoding="utf-8") as f:
      f.write(body)
  merge_shards(out, n)
  expected = "".join(dumps(t) + "\n" for i in range(n) for t in trajs[i::n])
  assert open(out, encoding="utf-8").read() == expected
  os.remove(shard_path(out, 2, n))  # a missing shard adds nothing
  merge_shards(out, n)
  assert open(out, encoding="utf-8").read() == "".join(dumps(t) + "\n" for i in range(2) for t in trajs[i::n])


# --- judge cache: loaded line by line ------------------------------------------------------------------


def test_cache_load_warnings_and_entries(tmp_path, caplog):
  path = tmp_path / "cache.jsonl"
  with JudgeCache(str(path)) as cache:
    for i in range(3):
      cache.put(f"k{i}", CachedCompletion(f"VERDICT: GOOD {i}", p_good=0.5 if i else None), vote=0)
  with open(path, "a", encoding="utf-8") as f:
    f.write('\n{"key": "k9"}\n' + json.dumps({"key": "k1", "text": "newest", "p_good": 1}) + '\n{"key": "k5", "te')
  torn = len('{"key": "k5", "te')
  before = path.read_bytes()
  with caplog.at_level(logging.WARNING):
    reader = JudgeCache(str(path), read_only=True)
  assert path.read_bytes() == before and len(reader) == 3 and reader.skipped_lines == 1
  assert reader.get("k1") == CachedCompletion("newest", 1.0) and reader.get("k0") == CachedCompletion("VERDICT: GOOD 0")
  skipped = f"Judge cache {path}:5: skipping an unreadable record (KeyError)."
  assert [r.getMessage() for r in caplog.records] == [skipped]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    writer = JudgeCache(str(path))
  assert len(writer) == 3 and path.read_bytes() == before[:-torn]
  assert [r.getMessage() for r in caplog.records] == [
      f"Judge cache {path}: dropping a torn last line ({torn} bytes) left by an interrupted write.",
      skipped]
  path.write_bytes(b'{"key": "only torn"')
  assert len(JudgeCache(str(path))) == 0 and path.read_bytes() == b""


def test_cache_load_keeps_a_record_appended_while_it_loads(tmp_path, monkeypatch):
  """The torn-line check took the file's size after finding its last newline: a whole record another
  process appended in between was taken for a torn line and cut off the file."""
  from swirl_jax.judges import cache as cache_module

  path = tmp_path / "cache.jsonl"
  with JudgeCache(str(path)) as cache:
    cache.put("k0", CachedCompletion("VERDICT: GOOD"), vote=0)
  appended = json.dumps({"key": "k1", "text": "VERDICT: BAD", "p_good": None}) + "\n"
  real = cache_module._complete_lines_end

  def then_append(*args):
    out = real(*args)
    with open(path, "a", encoding="utf-8") as f:
      f.write(appended)
    return out

  monkeypatch.setattr(cache_module, "_complete_lines_end", then_append)
  JudgeCache(str(path))
  assert path.read_text().endswith(appended)


# --- search: the hit set ------------------------------------------------------------------------------


def test_search_hits_are_the_sorted_matching_paragraphs():
  words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
  rng = np.random.default_rng(0)
  paragraphs = [Paragraph(f"t{i}", " ".join(rng.choice(words, 6))) for i in range(300)]
  s = BM25Search.from_paragraphs(paragraphs)
  for query in ("alpha", "alpha beta", "gamma delta kappa", "zeta zeta theta", "t7 alpha", "nothing here"):
    terms = [s._vocab[w] for w in tokenize(query) if w in s._vocab]
    postings = [s._post_docs[s._post_ptr[t]:s._post_ptr[t + 1]] for t in terms]
    expected = np.unique(np.concatenate(postings)).tolist() if postings else []
    assert s._score(tokenize(query))[1].tolist() == expected


# --- rl: prompt rows as int32 arrays ---------------------------------------------------------------------


def test_rl_rows_are_int32_arrays_of_the_prompt_tokens(monkeypatch):
  monkeypatch.setattr(rl, "Sampler", pytypes.SimpleNamespace(create=lambda *a, **k: pytypes.SimpleNamespace(batch=8)))
  examples = mixed_examples()
  lm = pytypes.SimpleNamespace(tokenizer=TOK, model=None, source="tiny")
  sampling = SamplingConfig(temperature=1.0, max_new_tokens=16)
  budget_full = max(len(tokenize_example(dataclasses.replace(ex, action=""), TOK, 100_000)) for ex in examples)
  for max_len in (budget_full + 16, budget_full // 2 + 16):
    cfg = rl.TrainConfig(mode="rl", max_len=max_len, states_per_step=2, group_size=2, progress=False)
    run = rl._Run(cfg, examples, lm, RuleJudge(), sampling)
    for ex, row in zip(examples, run.rows):
      t = tokenize_example(dataclasses.replace(ex, action=""), TOK, max_len - 16 + 1)
      assert row.dtype == np.int32 and row.tolist() == t.tokens[:t.prompt_len].tolist()
    prompts_seen = []
    monkeypatch.setattr(rl, "generate", lambda sampler, params, prompts, seeds: prompts_seen.extend(prompts) or
                        [[TOK.end_of_turn_id]] * len(prompts))
    run.sampler = pytypes.SimpleNamespace(batch=8, prepare=lambda params: params)
    run.rl_batch([3, 1], None, np.zeros(2, np.uint32), {})
    assert prompts_seen == [run.rows[i].tolist() for i in (3, 3, 1, 1)]
    assert all(type(x) is int for p in prompts_seen for x in p)
