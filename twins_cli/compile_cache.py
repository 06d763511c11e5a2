"""How often JAX's persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`, set by the Makefile) served a
compilation instead of XLA compiling it, counted from JAX's own monitoring events.

A process that sets `TWINS_JAX_CACHE_LOG` to a file appends its counts there when it exits (one JSON line), so
`make test-profile` can add them up over every process of a test pass.
"""
from __future__ import annotations

import atexit
import json
import os
import sys


class JaxCacheCounter:
    REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
    HITS = "/jax/compilation_cache/cache_hits"

    def __init__(self):
        self.requests = 0
        self.hits = 0

    @classmethod
    def install(cls) -> "JaxCacheCounter":
        import jax.monitoring

        counter = cls()
        jax.monitoring.register_event_listener(counter._event)
        path = os.environ.get("TWINS_JAX_CACHE_LOG")
        if path:
            atexit.register(counter._append, path, os.getpid())
        return counter

    def _event(self, event: str, **_kwargs) -> None:
        if event == self.REQUESTS:
            self.requests += 1
        elif event == self.HITS:
            self.hits += 1

    def describe(self) -> str:
        if not self.requests:
            return "JAX's persistent compile cache: no compilation went through it"
        return (f"JAX's persistent compile cache served {self.hits} of {self.requests} compilations "
                f"({100 * self.hits / self.requests:.0f} %)")

    def _append(self, path: str, pid: int) -> None:
        if os.getpid() != pid:  # a forked child runs its parent's exit handlers: its counts are the parent's
            return
        line = json.dumps({"argv": " ".join(sys.argv)[:200], "requests": self.requests, "hits": self.hits})
        with open(path, "a") as f:  # one short line per process: appends of this size do not interleave
            f.write(line + "\n")
