"""The stage-2 losses against values computed by hand, and the train step's loss against a numpy
REINFORCE-with-baseline-plus-KL computed from full logits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swirl_jax.checkpoints.build import random_model
from swirl_jax.models.config import preset as config_preset
from swirl_jax.training import losses
from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer, schedule
from swirl_jax.models.gemma import positions_from_valid
from swirl_jax.training.train_step import pack_batch


def test_group_advantages_by_hand():
  r = jnp.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  loo = losses.group_advantages(r, "loo")
  np.testing.assert_allclose(loo[0], [1 / 3, -1.0, 1 / 3, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(loo[1], 0.0)
  mean = losses.group_advantages(r, "mean")
  np.testing.assert_allclose(mean[0], [0.25, -0.75, 0.25, 0.25], rtol=1e-6)
  std = math.sqrt(0.75 * 0.25)
  norm = losses.group_advantages(r, "mean", normalize_std=True, eps=1e-4)
  np.testing.assert_allclose(norm[0], np.array([0.25, -0.75, 0.25, 0.25]) / (std + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(norm[1], 0.0)  # equal rewards: no signal, and no division by zero
  np.testing.assert_allclose(losses.group_advantages(r, "none"), r)
  np.testing.assert_allclose(losses.group_advantages(jnp.array([[0.7]]), "loo"), [[0.0]])


def test_kl_estimators_by_hand():
  logp, ref = jnp.array([-1.0, -2.0, -0.5]), jnp.array([-2.0, -1.0, -0.5])
  k3 = losses.kl_penalty(logp, ref, "k3")
  np.testing.assert_allclose(k3, [math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1, 0.0], rtol=1e-6)
  k2 = losses.kl_penalty(logp, ref, "k2")
  np.testing.assert_allclose(k2, [0.5, 0.5, 0.0], rtol=1e-6)
  assert float(jnp.min(losses.kl_penalty(jnp.linspace(-5, 0, 11), jnp.linspace(0, -5, 11), "k3"))) >= 0


def test_pg_loss_by_hand():
  # Two rows, three slots; row 0 has two loss tokens, row 1 three.
  logp = jnp.array([[-1.0, -2.0, -9.0], [-0.5, -3.0, -1.0]])
  ref = jnp.array([[-1.5, -2.0, -9.0], [-0.5, -2.0, -1.2]])
  mask = jnp.array([[True, True, False], [True, True, True]])
  adv = jnp.array([0.5, -1.0])
  ent = jnp.ones_like(logp)
  beta = 0.1
  parts = losses.pg_loss(losses.SlotStats(logp, ent), mask, adv, ref, jnp.float32(5.0), beta, "k3")

  def k3(lp, rf):
    return math.exp(rf - lp) - (rf - lp) - 1

  tokens = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
  pg = sum(-float(adv[i]) * float(logp[i, j]) for i, j in tokens) / 5
  kl = sum(k3(float(logp[i, j]), float(ref[i, j])) for i, j in tokens) / 5
  # pg = -(0.5 * -1 + 0.5 * -2 + -1 * -0.5 + -1 * -3 + -1 * -1) / 5 = -(-1.5 + 4.5) / 5 = -0.6
  assert pg == pytest.approx(-0.6)
  np.testing.assert_allclose(float(parts.pg), pg, rtol=1e-6)
  np.testing.assert_allclose(float(parts.kl), kl, rtol=1e-6)
  np.testing.assert_allclose(float(parts.total), pg + beta * kl, rtol=1e-6)
  np.testing.assert_allclose(float(parts.nll), -(-1 - 2 - 0.5 - 3 - 1) / 5, rtol=1e-6)

  # The gradient w.r.t. a token's logp is (-A + beta * dk3/dlogp) / n, dk3/dlogp = 1 - exp(ref - logp).
  g = jax.grad(lambda lp: losses.pg_loss(losses.SlotStats(lp, ent), mask, adv, ref, 5.0, beta).total)(logp)
  want = np.zeros((2, 3))
  for i, j in tokens:
    want[i, j] = (-float(adv[i]) + beta * (1 - math.exp(float(ref[i, j] - logp[i, j])))) / 5
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)


def test_masked_slots_cannot_make_the_loss_or_gradient_nan():
  """A padding slot where the policy and the reference disagree wildly (k3's exp(ref - logp) overflows in
  float32) or where logp is -inf carries no loss: the loss and gradient equal those without the slot."""
  logp = jnp.array([[-1.0, -2.0, -200.0], [-0.5, -3.0, -jnp.inf]])
  ref = jnp.array([[-1.5, -2.0, -1.0], [-0.5, -2.0, -1.2]])
  mask = jnp.array([[True, True, False], [True, True, False]])
  adv, ent = jnp.array([0.5, -1.0]), jnp.zeros_like(logp)

  def total(lp, rf, msk):
    return losses.pg_loss(losses.SlotStats(lp, ent[:, :lp.shape[1]]), msk, adv, rf, jnp.float32(4.0), 0.1).total

  want, want_g = jax.value_and_grad(total)(logp[:, :2], ref[:, :2], mask[:, :2])
  got, g = jax.value_and_grad(total)(logp, ref, mask)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g[:, :2]), np.asarray(want_g), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(g[:, 2]), 0.0)
  sft = jax.value_and_grad(lambda lp: losses.sft_loss(losses.SlotStats(lp, ent), mask, jnp.float32(4.0)).total)
  v, g = sft(logp)
  np.testing.assert_allclose(float(v), (1 + 2 + 0.5 + 3) / 4, rtol=1e-6)
  assert np.isfinite(np.asarray(g)).all()


def test_sft_loss_by_hand():
  logp = jnp.array([[-1.0, -2.0], [-4.0, -8.0]])
  mask = jnp.array([[True, False], [True, True]])
  parts = losses.sft_loss(losses.SlotStats(logp, jnp.zeros_like(logp)), mask, jnp.float32(3.0))
  np.testing.assert_allclose(float(parts.total), (1 + 4 + 8) / 3, rtol=1e-6)


def test_slot_logprobs_chunked_equals_full_logits():
  rng = np.random.default_rng(0)
  b, s, d, v = 3, 8, 5, 11
  h = jnp.asarray(rng.normal(size=(b, s, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  t = jnp.asarray(rng.integers(0, v, (b, s)), jnp.int32)
  full = jax.nn.log_softmax(h @ w, axis=-1)
  want = np.take_along_axis(np.asarray(full), np.asarray(t)[..., None], -1)[..., 0]
  ent_want = -np.sum(np.exp(full) * full, axis=-1)
  for chunk in (0, 2, 4, 8):
    got = losses.slot_logprobs(lambda x: x @ w, h, t, chunk)
    np.testing.assert_allclose(np.asarray(got.logp), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.entropy), ent_want, rtol=1e-5, atol=1e-6)
  g0 = jax.grad(lambda w_: losses.slot_logprobs(lambda x: x @ w_, h, t, 0).logp.sum())(w)
  g4 = jax.grad(lambda w_: losses.slot_logprobs(lambda x: x @ w_, h, t, 4).logp.sum())(w)
  np.testing.assert_allclose(np.asarray(g4), np.asarray(g0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="not a multiple of chunk"):
    losses.slot_logprobs(lambda x: x @ w, h, t, 3)


@pytest.mark.parametrize("chunk", [0, 2])
def test_slot_logprobs_gradients_equal_autodiff_of_log_softmax(chunk):
  """Gradients of the chunked, rematerialised head against jax.grad of a plain float64 log_softmax, for
  the weights and the hidden states, through a soft-capped head with a tied [V, D] weight, with a weight
  per slot (as the policy-gradient loss gives) and repeated targets; the entropy carries no gradient."""
  rng = np.random.default_rng(1)
  b, s, d, v = 2, 4, 6, 13
  h = rng.normal(size=(b, s, d))
  w = rng.normal(size=(v, d))
  t = rng.integers(0, v, (b, s)).astype(np.int32)
  t[0, :2] = 3
  coef = rng.normal(size=(b, s))

  def head(w_, x):
    return jnp.tanh(jnp.einsum("...d,vd->...v", x, w_) / 2.5) * 2.5

  def ours(w_, h_):
    st = losses.slot_logprobs(lambda x: head(w_, x), h_, jnp.asarray(t), chunk)
    return jnp.sum(coef * st.logp) + 7.0 * jnp.sum(st.entropy)

  def reference(w_, h_):
    lp = jax.nn.log_softmax(head(w_, h_), axis=-1)
    return jnp.sum(coef * jnp.take_along_axis(lp, jnp.asarray(t)[..., None], -1)[..., 0])

  with jax.enable_x64(True):
    want = jax.grad(reference, (0, 1))(jnp.asarray(w), jnp.asarray(h))
  got = jax.grad(ours, (0, 1))(jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32))
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-4, atol=2e-5)


def test_pack_batch_slots():
  rows = [([5, 6, 7, 8], [False, False, True, True]), ([9, 10, 11], [False, True, True])]
  b = pack_batch(rows, [1.0, 0.0], seq_bucket=8, slot_bucket=4, pad_id=0)
  assert b.tokens.shape == (2, 8) and b.slot_pos.shape == (2, 4)
  np.testing.assert_array_equal(b.slot_target[0, :2], [7, 8])
  np.testing.assert_array_equal(b.slot_pos[0, :2], [1, 2])  # the position before each target
  np.testing.assert_array_equal(b.slot_target[1, :2], [10, 11])
  np.testing.assert_array_equal(b.slot_pos[1, :2], [0, 1])
  np.testing.assert_array_equal(b.slot_mask, [[1, 1, 0, 0], [1, 1, 0, 0]])
  with pytest.raises(ValueError, match="first token"):
    pack_batch([([1, 2], [True, False])])
  with pytest.raises(ValueError, match="exceeds max_len"):
    pack_batch(rows, max_len=3)


def test_pack_batch_shared_prefix_layout_by_hand():
  """prefix_group=2: the rows' common prefix once (segment 0), then each row's rest (segments 1, 2) with
  positions continuing from the prefix; each row's slots point at the packed index of the token before
  its loss token, inside the prefix where the loss starts there."""
  rows = [([5, 6, 7, 8, 9], [False, False, True, True, True]),  # loss starts inside the common prefix
          ([5, 6, 7, 3], [False, False, False, True]),
          ([1, 2], [False, True]), ([1, 2, 4], [False, False, True])]  # row 2 is all prefix
  b = pack_batch(rows, [1.0, 0.0, 0.5, 0.5], seq_bucket=4, slot_bucket=2, prefix_group=2)
  assert b.tokens.shape == (2, 8) and b.slot_pos.shape == (2, 2 * 4) and b.rows_per_sequence == 2
  np.testing.assert_array_equal(b.tokens[0, :6], [5, 6, 7, 8, 9, 3])
  np.testing.assert_array_equal(b.positions[0, :6], [0, 1, 2, 3, 4, 3])
  np.testing.assert_array_equal(b.segments[0, :6], [0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(b.valid[0], [1] * 6 + [0] * 2)
  np.testing.assert_array_equal(b.slot_target[0], [7, 8, 9, 0, 3, 0, 0, 0])
  np.testing.assert_array_equal(b.slot_pos[0, :3], [1, 2, 3])  # row 0: tokens 7, 8, 9 after 6, 7, 8
  np.testing.assert_array_equal(b.slot_pos[0, 4], 2)  # row 1: token 3 after the shared 7
  np.testing.assert_array_equal(b.slot_mask[0], [1, 1, 1, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(b.tokens[1, :3], [1, 2, 4])
  np.testing.assert_array_equal(b.segments[1, :3], [0, 0, 2])
  np.testing.assert_array_equal(b.slot_pos[1], [0, 0, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(b.slot_mask[1], [1, 0, 0, 0, 1, 0, 0, 0])
  assert b.row_tokens() == 5 + 4 + 2 + 3
  with pytest.raises(ValueError, match="prefix_group=3"):
    pack_batch(rows, prefix_group=3)


def test_packed_rows_have_their_own_hidden_states():
  """A sequence holding a shared prefix and three continuations (gemma.attention_mask's segments)
  gives every token the hidden state it has in its own row: sliding window and global layers, Gemma 2
  and 3 (the window is shorter than the rows, so it must count positions, not packed indices)."""
  for name in ("tiny-gemma2", "tiny-gemma3"):
    cfg = config_preset(name, sliding_window=4)
    lm = random_model(cfg, seed=3)
    rng = np.random.default_rng(0)
    prefix = list(rng.integers(3, cfg.vocab_size, 6))
    rows = [prefix + list(rng.integers(3, cfg.vocab_size, n)) for n in (3, 5, 1)]
    b = pack_batch([(r, [False] * len(r)) for r in rows], seq_bucket=8, prefix_group=3)
    packed = np.asarray(lm(jnp.asarray(b.tokens), jnp.asarray(b.positions), jnp.asarray(b.valid),
                           jnp.asarray(b.segments)))[0]
    offset = len(prefix)
    for r in rows:
      tokens = jnp.asarray([r])
      valid = jnp.ones_like(tokens, bool)
      alone = np.asarray(lm(tokens, positions_from_valid(valid), valid))[0]
      np.testing.assert_allclose(packed[:len(prefix)], alone[:len(prefix)], rtol=1e-5, atol=1e-5)
      tail = len(r) - len(prefix)
      np.testing.assert_allclose(packed[offset:offset + tail], alone[len(prefix):], rtol=1e-5, atol=1e-5)
      offset += tail


def test_train_step_loss_equals_numpy_reinforce_with_loo_baseline_and_k3():
  """The jitted step's loss on a tiny model = REINFORCE + LOO baseline + k3 KL computed in numpy
  from the full [B, T, V] logits of the policy and of a different reference model."""
  from flax import nnx

  from swirl_jax.checkpoints.build import abstract_model, random_model
  from swirl_jax.models.config import preset
  from swirl_jax.models.gemma import forward_logits
  from swirl_jax.models.sharding import MeshConfig, Rules, make_mesh
  from swirl_jax.training import train_state as ts
  from swirl_jax.training.train_step import StepConfig, make_train_step

  cfg = preset("tiny-gemma3", num_layers=2, layer_types=("local", "global"))
  policy, reference = random_model(cfg, seed=1), random_model(cfg, seed=2)
  rng = np.random.default_rng(0)
  g, n_groups = 4, 2
  rows = []
  for _ in range(g * n_groups):
    n = int(rng.integers(8, 20))
    toks = rng.integers(3, 512, n)
    mask = np.zeros(n, bool)
    mask[int(rng.integers(3, n - 1)):] = True
    rows.append((toks, mask))
  rewards = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
  batch = pack_batch(rows, rewards, seq_bucket=8, slot_bucket=8)
  beta = 0.2

  # numpy reference from full logits.
  def token_logps(lm):
    logits = np.asarray(forward_logits(lm, jnp.asarray(batch.tokens), jnp.asarray(batch.valid)), np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return [[logits[i, t - 1, toks[t]] - logz[i, t - 1] for t in np.flatnonzero(m)] for i, (toks, m) in enumerate(rows)]

  lp, ref = token_logps(policy), token_logps(reference)
  r = rewards.reshape(n_groups, g)
  adv = (r - (r.sum(1, keepdims=True) - r) / (g - 1)).reshape(-1)
  n_tok = sum(len(x) for x in lp)
  want = sum(-adv[i] * lp[i][j] + beta * (math.exp(ref[i][j] - lp[i][j]) - (ref[i][j] - lp[i][j]) - 1)
             for i in range(len(rows)) for j in range(len(lp[i]))) / n_tok

  mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
  rules = Rules()
  opt, lr = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
  params = ts.model_params(policy)
  psh = ts.params_shardings(policy, mesh, rules)
  ssh = ts.state_shardings(opt, params, psh, mesh)
  graphdef = nnx.graphdef(abstract_model(cfg, mesh, rules))
  ref_params = ts.model_params(reference)
  for micro, chunk in ((2, 4),):  # micro-batches and logit chunks on: the most machinery
    state = ts.init_train_state(params, opt, 0, ssh)
    cfg = StepConfig(losses.LossConfig(kl_coef=beta, baseline="loo", chunk=chunk), group_size=g,
                     micro_batches=micro)
    step = make_train_step(graphdef, opt, lr, cfg, mesh, rules, ssh, psh)
    _, m = step(state, ref_params, batch)
    assert float(m["loss_tokens"]) == n_tok
    np.testing.assert_allclose(float(m["loss"]), want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(float(m["nll"]), -np.mean([x for row in lp for x in row]), rtol=2e-5)


def test_schedule_and_clipping():
  cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=4, decay_steps=10, end_lr_ratio=0.1)
  lr = schedule(cfg)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 2, 3, 4)], [0.25, 0.75, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(float(lr(9)), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10)), rtol=1e-5)
  np.testing.assert_allclose(float(lr(14)), 0.1, rtol=1e-5)
  opt, _ = make_optimizer(OptimizerConfig(learning_rate=1.0, warmup_steps=0, clip_norm=1.0, b1=0.0, b2=0.0,
                                          eps=0.0, weight_decay=0.0))
  params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros((2,))}
  grads = {"w": jnp.full((2, 2), 30.0), "b": jnp.full((2,), 40.0)}
  state = opt.init(params)
  updates, _ = opt.update(grads, state, params)
  np.testing.assert_allclose(np.asarray(updates["w"]), -1.0, rtol=1e-5)  # Adam with b1=b2=0: -sign(g)


def test_loss_and_train_configs_refuse_settings_that_fail_later():
  from swirl_jax.training.rl import TrainConfig

  with pytest.raises(ValueError, match="normalize_std needs baseline loo or mean"):
    losses.LossConfig(baseline="none", normalize_std=True)
  with pytest.raises(ValueError, match="std_eps must be > 0"):
    losses.LossConfig(std_eps=0.0)
  with pytest.raises(ValueError, match=r"seq_bucket=0 \(must be >= 1\), steps_per_call=0 \(must be >= 1\)"):
    TrainConfig(seq_bucket=0, steps_per_call=0)
  with pytest.raises(ValueError, match="task must be math or search"):
    TrainConfig(task="maths")
  with pytest.raises(ValueError, match="offline_reward"):
    TrainConfig(offline_reward="proces")
