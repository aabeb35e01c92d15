"""Training precision: ``"auto"`` picks bfloat16 autocast by measuring the real step where the hardware runs bf16
natively, and stays float32 everywhere else.

bf16 autocast halves the arithmetic of the patch encoders on CPUs with AVX512-BF16 or AMX and on CUDA GPUs with
bf16 support, but its casts cost more than its GEMMs save on small steps (64-d features, 40-160 patches: issue 23
measured bf16 1.6x *slower* than fp32 there on a Zen 4 CPU), so a CPU flag alone cannot decide. ``"auto"`` [D]:

1. no native bf16 (e.g. AVX2 only, where torch emulates it) -> ``fp32``, nothing timed;
2. native bf16 and a fit long enough to pay for it -> a **probe**: the real training step (forward and backward
   of the fit's own batches, chunked as in training) after one warm-up round, each round a new batch run once
   each way, for at least :data:`PROBE_STEPS` rounds and :data:`PROBE_MIN_SECONDS` of timed steps (at most
   :data:`PROBE_MAX_STEPS` rounds), on the model's own weights restored afterwards (no optimiser step, RNG state
   restored: the fit trains exactly as with the chosen precision given explicitly). bf16 is chosen iff the
   median over rounds of (bf16 step / fp32 step on the same batch) is below 1 - :data:`BF16_MARGIN` (paired:
   a change in the machine's load between rounds cancels; a tie goes to the exact float32);
3. a fit too short to pay for the probe (fewer than :data:`MIN_STEPS_TO_PROBE` steps) -> the **rule** derived
   from such probes (``benchmarks/README.md``, issue 23): bf16 iff a forward pass holds at least
   :data:`RULE_MIN_PATCHES` patches, else fp32. Probed on a Zen 4 EPYC (AVX512-BF16, 1 thread): ~40-patch steps
   ran faster in fp32 at 16-, 64- and 256-d features, ~320-patch steps faster in bf16 at every width, and so
   did the benchmark's three regimes (~770, ~2,500 and 4,096 patches per pass): with the 512-wide hidden layer
   the patch count, not the feature width, decides whether the GEMMs outweigh the casts.

A decision is remembered for the process under its :func:`probe_key`, so cross-validation folds of one run probe
once. Weights, optimiser state, losses and predictions are float32 in every mode.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: timed rounds of a probe, at least (after one warm-up round); more until PROBE_MIN_SECONDS, up to PROBE_MAX_STEPS
PROBE_STEPS = 3
PROBE_MIN_SECONDS = 1.0
PROBE_MAX_STEPS = 15
#: bf16 must be this much faster (relative) than fp32 to be chosen
BF16_MARGIN = 0.05
#: below this many training steps in the whole fit the probe would cost more than it can save: the rule decides
MIN_STEPS_TO_PROBE = 60
#: the rule: bf16 iff a forward pass holds at least this many patches
RULE_MIN_PATCHES = 256

_DECISIONS: dict[tuple, PrecisionChoice] = {}


@dataclass
class PrecisionChoice:
    """What ``precision`` resolved to, and why (``reason`` in requested / not-native / probe / rule / cached)."""

    precision: str
    reason: str
    step_seconds: dict[str, float] = field(default_factory=dict)   # median probe step per precision
    probe_seconds: float = 0.0                                      # wall time the probe took (one-off)

    def describe(self) -> str:
        timed = ", ".join(f"{p} {s * 1e3:.1f} ms" for p, s in self.step_seconds.items())
        took = f"; the probe took {self.probe_seconds:.1f} s" if self.probe_seconds else ""
        return f"precision {self.precision} ({self.reason}{': ' + timed if timed else ''}{took})"


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``path`` (empty where it cannot be read)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively (so bf16 autocast can be a speed-up)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()  # "AVX512", "AVX2", ... ("AMX" too)
    return "AMX" in capability or bool(cpu_flags() & set(_CPU_BF16_FLAGS))


def rule_precision(patches_per_step: float) -> str:
    """The stated rule for short fits on native-bf16 hardware (module docstring, item 3)."""
    return "bf16" if patches_per_step >= RULE_MIN_PATCHES else "fp32"


def pick_from_probe(seconds: dict[str, list[float]]) -> tuple[str, dict[str, float]]:
    """``{"fp32": [s, ...], "bf16": [s, ...]}`` (paired by round) -> (the faster by the margin, the medians)."""
    medians = {p: statistics.median(s) for p, s in seconds.items()}
    ratio = statistics.median(b / max(f, 1e-12) for f, b in zip(seconds["fp32"], seconds["bf16"], strict=True))
    return ("bf16" if ratio < 1 - BF16_MARGIN else "fp32"), medians


def time_steps(step: Callable[[str], None], steps: int = PROBE_STEPS, timer: Callable[[], float] = time.perf_counter,
               prepare: Callable[[int], None] | None = None, min_seconds: float | None = None,
               max_steps: int | None = None) -> dict[str, list[float]]:
    """Seconds of ``step(precision)``, paired by round: round 0 runs it once each way as warm-up, then rounds
    time it each way, fp32 and bf16 interleaved, until ``steps`` rounds and ``min_seconds`` of timed steps (at
    most ``max_steps`` rounds); ``prepare(round)`` readies a round's input first, untimed."""
    min_seconds = PROBE_MIN_SECONDS if min_seconds is None else min_seconds
    max_steps = max(steps, PROBE_MAX_STEPS if max_steps is None else max_steps)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    round_, spent = 0, 0.0
    while round_ <= steps or (spent < min_seconds and round_ <= max_steps):
        if prepare is not None:
            prepare(round_)
        for precision in ("fp32", "bf16"):
            start = timer()
            step(precision)
            if round_:
                seconds[precision].append(timer() - start)
                spent += seconds[precision][-1]
        round_ += 1
    return seconds


def probe_key(device: torch.device, model: str, feature_dim: int, patches_per_step: float) -> tuple:
    """What a remembered decision is valid for: device, model, feature width, patches per step (octave)."""
    return device.type, model, int(feature_dim), round(math.log2(max(patches_per_step, 1.0)))


def choose_precision(precision: str, device: torch.device, *, fit_steps: int = 0, patches_per_step: float = 0.0,
                     feature_dim: int = 0, key: tuple | None = None,
                     probe: Callable[[], dict[str, list[float]]] | None = None) -> PrecisionChoice:
    """Resolve ``precision`` for one fit (module docstring); ``probe()`` returns :func:`time_steps`' seconds."""
    if precision != "auto":
        return PrecisionChoice(precision, "requested")
    if not native_bf16(device):
        return PrecisionChoice("fp32", "no native bf16 on this device")
    if key is not None and key in _DECISIONS:
        cached = _DECISIONS[key]
        return PrecisionChoice(cached.precision, f"{cached.reason}, remembered", cached.step_seconds)
    if probe is not None and fit_steps >= MIN_STEPS_TO_PROBE:
        start = time.perf_counter()
        chosen, medians = pick_from_probe(probe())
        choice = PrecisionChoice(chosen, "timed probe of the fit's batches", medians,
                                 time.perf_counter() - start)
    else:
        choice = PrecisionChoice(rule_precision(patches_per_step),
                                 f"rule: {patches_per_step:.0f} patches x {feature_dim}-d per step, "
                                 f"fit too short to probe")
    if key is not None:
        _DECISIONS[key] = choice
    return choice


def forget_decisions() -> None:
    """Drop the remembered decisions (tests; a process whose machine load changed)."""
    _DECISIONS.clear()


def resolve_precision(precision: str, device: torch.device) -> str:
    """Without a probe: ``"auto"`` -> fp32 where bf16 is not native, else the rule at a large step [D]."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision
