"""The sharded train step on 8 CPU devices equals the 1-device step (remat and micro-batching change
nothing either); the step never forms full-vocabulary logits at positions without loss; the state is
donated; on CPU the step compiles with swirl_jax.xla_options.

Tolerance of the sharded comparison (stated): metrics (loss, KL, grad norm) within rtol 1e-5, and the
parameter change of two AdamW steps within 2e-5 relative (L2 norm of the difference of the changes
over the norm of the change; measured ~3e-6). Reductions run in a different order on a mesh, and
Adam's first update g / (|g| + eps) is ~sign(g) whenever |g| >> eps, which would turn rounding-level
differences of tiny gradients into whole steps; so the test uses eps = 1e-3.
"""

import jax
import numpy as np
import pytest

from multidevice import run_with_devices

SETUP = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from swirl_jax.checkpoints.build import abstract_model, build_model, model_weights, random_model
from swirl_jax.models.config import preset
from swirl_jax.models.sharding import MeshConfig, Rules, make_mesh
from swirl_jax.training import losses, train_state as ts
from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer
from swirl_jax.training.train_step import StepConfig, make_train_step, pack_batch

CFG = preset("tiny-gemma3", num_layers=2, layer_types=("local", "global"))
WEIGHTS = model_weights(random_model(CFG, seed=1))
REF_WEIGHTS = model_weights(random_model(CFG, seed=2))
RULES = Rules()

def group_rows(rng, g=4):
  # g rows that share a state (a common prefix) and each add an action; the loss mask starts inside
  # the state in one row and two actions begin with the same token (the common prefix runs into them).
  state = rng.integers(3, CFG.vocab_size, int(rng.integers(8, 20)))
  first = rng.integers(3, CFG.vocab_size)
  rows = []
  for i in range(g):
    action = rng.integers(3, CFG.vocab_size, int(rng.integers(3, 11)))
    if i < 2:
      action[0] = first
    toks = np.concatenate([state, action])
    m = np.zeros(len(toks), bool); m[len(state) - (2 if i == 3 else 0):] = True
    rows.append((toks, m))
  return rows

def batches(n=2, rows=16, seed=0, shared=None):
  # shared = None: independent random rows, one per sequence; False / True: groups of 4 rows sharing a
  # state, packed one row per sequence / one group per sequence (pack_batch's prefix_group).
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    rs = []
    if shared is None:
      for _ in range(rows):
        k = int(rng.integers(12, 30))
        m = np.zeros(k, bool); m[int(rng.integers(4, k - 2)):] = True
        rs.append((rng.integers(3, CFG.vocab_size, k), m))
    else:
      for _ in range(rows // 4):
        rs.extend(group_rows(rng))
    out.append(pack_batch(rs, rng.integers(0, 2, rows).astype(np.float32), seq_bucket=16, slot_bucket=8,
                          prefix_group=4 if shared else 1))
  return out

def run(mesh, micro=2, remat=False, steps=2, chunk=8, remat_policy="block", shared=None):
  model = build_model(CFG, WEIGHTS.__getitem__, mesh, RULES)
  ref_model = build_model(CFG, REF_WEIGHTS.__getitem__, mesh, RULES)
  # eps near the gradient scale: Adam's first step is ~sign(g), which would amplify rounding-level
  # differences of near-zero gradients into whole steps; a larger eps keeps the update smooth in g.
  opt, lr = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0, weight_decay=0.01, eps=1e-3))
  params = ts.model_params(model)
  psh = ts.params_shardings(model, mesh, RULES)
  ssh = ts.state_shardings(opt, params, psh, mesh)
  state = ts.init_train_state(params, opt, 0, ssh)
  gd = nnx.graphdef(abstract_model(CFG.replace(remat=remat, remat_policy=remat_policy), mesh, RULES))
  cfg = StepConfig(losses.LossConfig(kl_coef=0.1, chunk=chunk), group_size=4, micro_batches=micro)
  step = make_train_step(gd, opt, lr, cfg, mesh, RULES, ssh, psh)
  ref = ts.model_params(ref_model)
  ms = []
  for b in batches(steps, shared=shared):
    state, m = step(state, ref, b)
    ms.append({k: float(v) for k, v in m.items()})
  return state, ms

def delta(state):
  return {k: np.asarray(jax.device_get(v)) - WEIGHTS[k] for k, v in
          ((".".join(map(str, p)), l) for p, l in
           ((tuple(getattr(x, "key", x) for x in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]))}

def compare(ms, ms0, d, d0, what):
  for a, b in zip(ms, ms0):
    for k in ("loss", "kl", "pg_loss", "grad_norm", "nll"):
      # pg_loss is a sum of terms of both signs: tolerance relative to the size of its terms (nll).
      assert abs(a[k] - b[k]) <= 1e-5 * max(abs(b[k]), abs(b["nll"])), (what, k, a[k], b[k])
  num = np.sqrt(sum(np.sum((d[k] - d0[k]) ** 2) for k in d0))
  den = np.sqrt(sum(np.sum(d0[k] ** 2) for k in d0))
  assert num / den <= 2e-5, (what, num / den)
  print(what, "rel", num / den, flush=True)
"""


def test_sharded_step_equals_single_device():
  """data, fsdp and tensor layouts vs one device. The fsdp run also turns on remat and a single
  micro-batch (the reference uses 2), the tensor run remat that keeps the matmuls' outputs: none
  changes the full-batch gradient."""
  out = run_with_devices(SETUP + """
assert jax.device_count() == 8
single = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
s0, ms0 = run(single)
d0 = delta(s0)
for shape, kw in [((8, 1, 1), {}), ((1, 8, 1), dict(micro=1, remat=True)),
                  ((1, 2, 4), dict(chunk=0, remat=True, remat_policy="dots"))]:
  mesh = make_mesh(MeshConfig(*shape))
  s, ms = run(mesh, **kw)
  # the updated state keeps the rules' layout (no silent replication by the step)
  emb = s.params["embedding"].sharding
  assert emb.spec == RULES.spec(("vocab", "embed")), emb
  compare(ms, ms0, delta(s), d0, shape)
""")
  print(out)
  assert out.count("rel") == 3, out


def test_shared_prefix_step_equals_one_row_per_sequence():
  """Groups of 4 rows that share a state, packed one group per sequence (the state once, the actions
  after it, pack_batch's prefix_group), give the loss, metrics and updated parameters of the same rows
  packed one per sequence: on one device without remat, and on a (data 2, tensor 4) mesh with remat
  and micro-batching. Same tolerances as the sharded comparison (different summation order)."""
  out = run_with_devices(SETUP + """
single = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
b0, b1 = batches(1, shared=False)[0], batches(1, shared=True)[0]
assert b1.tokens.shape[0] == b0.tokens.shape[0] // 4 and b1.rows_per_sequence == 4
assert b1.row_tokens() == b0.row_tokens() == np.count_nonzero(b0.valid) > np.count_nonzero(b1.valid)
s0, ms0 = run(single, shared=False)
d0 = delta(s0)
for shape, kw in [((1, 1, 1), dict(micro=1)), ((2, 1, 4), dict(micro=2, remat=True))]:
  mesh = single if shape == (1, 1, 1) else make_mesh(MeshConfig(*shape))
  s, ms = run(mesh, shared=True, **kw)
  compare(ms, ms0, delta(s), d0, shape)
""")
  print(out)
  assert out.count("rel") == 2, out


@pytest.mark.parametrize("policy", ["block", "dots"])
def test_remat_gives_the_gradient_of_no_remat(policy):
  """Both remat paths (the train step's hidden_states and Gemma.__call__'s nnx.remat), each policy."""
  from flax import nnx

  import jax.numpy as jnp

  from swirl_jax.checkpoints.build import abstract_model, random_model
  from swirl_jax.models.config import preset
  from swirl_jax.models.gemma import positions_from_valid
  from swirl_jax.training.train_step import hidden_states

  cfg = preset("tiny-gemma3", num_layers=2, layer_types=("local", "global"))
  params = nnx.state(random_model(cfg, seed=3))
  graphdefs = {remat: nnx.graphdef(abstract_model(cfg.replace(remat=remat, remat_policy=policy)))
               for remat in (False, True)}
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (2, 12)), jnp.int32)
  valid = jnp.asarray(np.arange(12)[None] < np.array([[12], [9]]))
  w = jnp.asarray(rng.normal(size=(2, 12, cfg.d_model)), jnp.float32)

  def loss(p, remat, through_step):
    model = nnx.merge(graphdefs[remat], p)
    pos = positions_from_valid(valid)
    h = hidden_states(model, tokens, pos, valid) if through_step else model(tokens, pos, valid)
    return jnp.sum(jnp.where(valid[..., None], h * w, 0.0))

  want = jax.grad(loss)(params, False, True)
  for through_step in (True, False):
    got = jax.grad(loss)(params, True, through_step)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_no_full_vocabulary_logits_and_state_is_donated():
  """Also: on CPU the step is compiled with swirl_jax.xla_options (no reduction fusion in YNNPACK)."""
  from flax import nnx

  from swirl_jax.checkpoints.build import abstract_model, random_model
  from swirl_jax.models.config import preset
  from swirl_jax.models.sharding import MeshConfig, Rules, make_mesh
  from swirl_jax.training import losses
  from swirl_jax.training import train_state as ts
  from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer
  from swirl_jax.training.train_step import StepConfig, make_train_step, pack_batch

  cfg = preset("tiny-gemma3", num_layers=2, layer_types=("local", "global"), vocab_size=392)
  model = random_model(cfg, seed=0)
  mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
  rules = Rules()
  opt, lr = make_optimizer(OptimizerConfig())
  params = ts.model_params(model)
  psh = ts.params_shardings(model, mesh, rules)
  ssh = ts.state_shardings(opt, params, psh, mesh)
  state = ts.init_train_state(params, opt, 0, ssh)
  gd = nnx.graphdef(abstract_model(cfg, mesh, rules))
  step = make_train_step(gd, opt, lr, StepConfig(losses.LossConfig(kl_coef=0.1, chunk=8), group_size=2), mesh,
                         rules, ssh, psh)
  rows = [(np.arange(3, 3 + 40), np.r_[np.zeros(30, bool), np.ones(10, bool)]) for _ in range(4)]
  batch = pack_batch(rows, [1.0, 0.0, 0.0, 1.0], seq_bucket=48, slot_bucket=16)
  assert batch.tokens.shape == (4, 48) and batch.slot_mask.shape == (4, 16)
  hlo = step.lower(state, params, batch).compile().as_text()
  # Logits exist for chunks of 8 loss slots, never for the 48 positions (nor all 16 slots at once).
  assert "f32[4,8,392]" in hlo
  for shape in ("[4,48,392]", "[4,16,392]", "[48,392]"):
    assert shape not in hlo, shape
  if jax.default_backend() == "cpu":  # compiled with xla_options: no reduction goes to YNNPACK
    from test_xla_options import ynn_fusion_ops

    assert not [op for op in ynn_fusion_ops(hlo) if op.startswith("reduce")]
  old = jax.tree.leaves(state.params)[0]
  state2, _ = step(state, params, batch)
  assert old.is_deleted()  # donated
  assert int(state2.step) == 1
