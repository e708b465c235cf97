"""The bounds on what ctxpatch accepts: every number, text and size a user gives, each stated once with its reason.

Each bound is checked before any work starts; a value outside it is bad input (`CtxpatchInputError`, exit 2)
whose message names the field, the value and the allowed range. The bounds are far above what real blocks need
(the catalog's largest spec is under 1 KiB, its activations under 25 nodes, its widest mixture 256 experts) and
far below what would exhaust the arithmetic, the recursion or the memory.

Where the true limit is the machine's memory (the widths, depths and token counts of ``ctxpatch validate``), the
range here is only an outer bound; the run is also estimated against the memory available when it is planned
(`numeric.check.validate.memory_needed`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from symbolic.errors import CtxpatchInputError


@dataclass(frozen=True)
class Bound:
    """A closed range [lo, hi] of a field, integer or real; ``magnitude``: the range bounds |value| and 0 is
    refused (a nonzero scale)."""

    lo: float
    hi: float
    why: str
    integer: bool = True
    magnitude: bool = False

    def allowed(self) -> str:
        """The range in words, e.g. "an integer from 1 to 256"."""
        kind = "an integer" if self.integer else "a finite number"
        span = f"from {_num(self.lo)} to {_num(self.hi)}"
        if self.magnitude:
            return f"a nonzero finite number with absolute value {span} ({self.why})"
        return f"{kind} {span} ({self.why})"

    def holds(self, value: object) -> bool:
        """Whether ``value`` is a number of the right kind inside the range (never a bool)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        v = abs(value) if self.magnitude else value
        return self.lo <= v <= self.hi

    def check(self, where: str, value: object, kind: type[CtxpatchInputError] = CtxpatchInputError) -> object:
        """``value`` if it `holds`, else the bad input ``kind`` naming ``where`` (a file and field, an option)."""
        if not self.holds(value):
            raise kind(f"{where} has the value {shown(value)}, which is not allowed. Allowed: {self.allowed()}.")
        return value


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def shown(value: object, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters (a hostile value can be megabytes long or deeply nested)."""
    try:
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**60 else \
            f"an integer of {len(str(abs(value)))} digits"
    except (RecursionError, ValueError):  # nested deeper than repr goes, or more digits than str converts
        return f"a {type(value).__name__} too large to print"
    return text if len(text) <= width else f"{text[:width]}... ({len(text)} characters)"


# --------------------------------------------------------------------------- spec files (symbolic.spec)

#: The size of a spec file in bytes (the catalog's largest is under 1 KiB).
SPEC_BYTES = 64 * 1024
#: How deeply tables and arrays nest in a spec ([mlp] -> pre_norm = {...} is 3 levels with the file).
SPEC_DEPTH = 8
#: Characters of a text field (description, reference) and of a name-like one (name, model types, patterns).
TEXT_CHARS = 2000
NAME_CHARS = 64
#: Entries of a list field (hf_model_types, patch.allow).
LIST_ITEMS = 64
#: A catalog name or a spec file's path (ARCH_OR_TOML): its characters, and those of each part between slashes
#: (Linux's PATH_MAX and NAME_MAX).
PATH_CHARS = 4096
PATH_PART_CHARS = 255

EPS = Bound(0, 1, "a norm's eps guards a division by a root mean square; models use 1e-12 to 1e-5",
            integer=False)
BRANCH_SCALE = Bound(1e-4, 1e4, "the output strategies divide by it; Granite uses 0.22", integer=False,
                     magnitude=True)
ROUTED_SCALE = Bound(1e-4, 1e4, "it multiplies the routed experts' sum; DeepSeek-V3 uses 2.5", integer=False,
                     magnitude=True)
EXPERTS = Bound(1, 4096, "16 times the catalog's largest mixture, DeepSeek-V3's 256 experts")
RENORM_EPS = Bound(0, 1, "it guards the top-k renormalisation s_j / (sum s + eps); LFM2-MoE uses 1e-6", integer=False)
JITTER_EPS = Bound(0, 1, "the sparsemixer masks logits (max - l) / max(|l|, max) above 2 jitter_eps; PhiMoE uses "
                   "0.01", integer=False)
TOP_K = Bound(1, 128, "experts chosen per token (the catalog chooses 1 to 8); the reference loops over them")

# --------------------------------------------------------------------------- activations (symbolic.activations)

#: Characters of a custom activation (the catalog's longest has 38).
EXPR_CHARS = 400
#: Nodes of its expression tree (gelu_tanh has 20) and how deeply they nest (calls, operators).
EXPR_NODES = 100
EXPR_DEPTH = 12
#: Numeric exponents multiply along any path of the tree to at most this (the degree of a power of x).
EXPR_DEGREE = 32
#: A number written in an activation: at most this many digits, and 0 or a magnitude in [1/LITERAL_MAX, LITERAL_MAX].
LITERAL_DIGITS = 30
LITERAL_MAX = 1e30
#: An activation must be real and finite (float64) at every x = k/10 in [-PROBE_X, PROBE_X].
PROBE_X = 100

# --------------------------------------------------------------------------- command-line sizes and seeds

LAYERS = Bound(1, 256, "layers of a stack")
TRIALS = Bound(1, 1000, "random trials")
TOKENS = Bound(1, 4096, "tokens of a context or query")
WIDTH = Bound(2, 65536, "the model width d; the memory estimate bounds it further")
MLP_WIDTH = Bound(1, 262144, "the MLP width m; the memory estimate bounds it further")
HEADS = Bound(1, 1024, "attention heads")
SEED = Bound(0, 2**32 - 1, "a 32-bit seed, as every random generator takes")
GENERATE = Bound(0, 4096, "tokens to generate")
#: A run may plan to use at most this fraction of the memory available when it starts.
MEMORY_FRACTION = 0.5


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``, else free pages); None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
