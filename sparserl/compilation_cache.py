"""JAX's persistent compilation cache in a per-user directory, so a second run skips compiling.

`enable()` points `jax_compilation_cache_dir` at `$SPARSERL_COMPILATION_CACHE`
if set (an empty value or `0` turns the cache off), else
`$XDG_CACHE_HOME/sparserl/jax` (default `~/.cache/sparserl/jax`), and caches
every program however quickly it compiled (JAX's default skips programs that
compile in under a second: most of ours).

Safe under SIGKILL: with no size limit (`jax_compilation_cache_max_size` left
at -1) JAX's file cache takes no lock (`jax._src.lru_cache.LRUCache`), so a
killed run cannot leave one behind; an entry cut short by a kill fails to
decompress on the next read, which JAX reports as a warning and answers by
compiling again.
"""

import os

ENV_VAR = "SPARSERL_COMPILATION_CACHE"


def cache_dir() -> str | None:
    """The cache directory this process uses, or None when the cache is off."""
    configured = os.environ.get(ENV_VAR)
    if configured is not None:
        return None if configured in ("", "0") else configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparserl", "jax")


def enable() -> str | None:
    """Turns on the persistent compilation cache (before the first compile); returns its directory or None."""
    import jax

    directory = cache_dir()
    if directory is None:
        return None
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory
