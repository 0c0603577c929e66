"""The per-user persistent compilation cache: where it lives, how to turn it off, and that it stores programs."""

import os
import subprocess
import sys

from sparserl import compilation_cache


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.cache_dir() == os.path.join(str(tmp_path), "sparserl", "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "sparserl", "jax")
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compilation_cache.cache_dir() == str(tmp_path / "mine")
    for off in ("", "0"):
        monkeypatch.setenv(compilation_cache.ENV_VAR, off)
        assert compilation_cache.cache_dir() is None and compilation_cache.enable() is None


def test_a_program_compiled_in_a_fraction_of_a_second_is_stored(tmp_path):
    script = ("import jax, jax.numpy as jnp; from sparserl import compilation_cache; "
              "print(compilation_cache.enable()); jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)).block_until_ready()")
    environment = dict(os.environ, JAX_PLATFORMS="cpu", **{compilation_cache.ENV_VAR: str(tmp_path / "cache")})
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(tmp_path / "cache")
    assert any(name.endswith("-cache") for name in os.listdir(tmp_path / "cache"))
