"""Where ``python -m swirl_jax.main`` keeps JAX's persistent compilation cache (the end-to-end test in
test_main_cli.py checks that programs land there)."""

import re

import jax
import pytest

from swirl_jax import compilation_cache, host_cpu


@pytest.fixture
def restore_jax_cache_dir(monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", before)


def test_default_directory_is_per_host_beside_the_packaged_models(tmp_path, monkeypatch):
  monkeypatch.setenv("SWIRL_JAX_CACHE", str(tmp_path / "env"))
  assert re.fullmatch(r"[\w]+-[0-9a-f]{12}", host_cpu.host_id())
  assert compilation_cache.default_directory() == str(tmp_path / "env" / "xla" / host_cpu.host_id())
  assert compilation_cache.default_directory(str(tmp_path / "m")) == str(tmp_path / "m" / "xla" / host_cpu.host_id())


def test_enable_sets_jax_s_cache_dir_unless_off_or_overridden(tmp_path, monkeypatch, restore_jax_cache_dir):
  jax.config.update("jax_compilation_cache_dir", None)
  assert compilation_cache.enable("none") is None
  assert jax.config.jax_compilation_cache_dir is None
  target = tmp_path / "a" / "b"
  assert compilation_cache.enable(str(target)) == str(target) and target.is_dir()
  assert jax.config.jax_compilation_cache_dir == str(target)
  assert compilation_cache.enable("", str(tmp_path / "models")) == str(tmp_path / "models" / "xla" / host_cpu.host_id())
  # JAX's own environment switch wins over the setting, even over 'none'
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert compilation_cache.enable("none") == str(tmp_path / "env")


def test_a_directory_that_cannot_be_made_leaves_the_cache_off(tmp_path, restore_jax_cache_dir):
  jax.config.update("jax_compilation_cache_dir", None)
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  assert compilation_cache.enable(str(blocker / "xla")) is None
  assert jax.config.jax_compilation_cache_dir is None
  assert blocker.read_text() == "not a directory"
