"""Issue 23: ``precision="auto"`` decided by a timed probe of the real step (or the stated rule), patch-budget
chunks (``batch_patches``) and the bf16 shape bucketing. Timings are injected: no wall clock is asserted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _cohorts import easy_survival_cohort

from msrl_plugin import precision
from msrl_plugin.aggregators import train_step
from msrl_plugin.batching import CaseData, patch_chunks
from msrl_plugin.nn import abmil as abmil_nn
from msrl_plugin.registry import create_aggregator
from msrl_plugin.survival import nll_survival_loss

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_decisions():
    precision.forget_decisions()
    yield
    precision.forget_decisions()


def _never() -> dict:
    raise AssertionError("the probe must not run here")


def test_explicit_precision_and_non_native_hardware_never_probe(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    for fixed in ("fp32", "bf16"):
        assert precision.choose_precision(fixed, CPU, fit_steps=10**6, probe=_never).precision == fixed
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    choice = precision.choose_precision("auto", CPU, fit_steps=10**6, patches_per_step=1e6, feature_dim=1024,
                                        probe=_never)
    assert choice.precision == "fp32" and "no native bf16" in choice.reason


@pytest.mark.parametrize(("fp32", "bf16", "want"), [
    ([1.0, 1.0, 1.1], [0.5, 0.6, 0.5], "bf16"),     # bf16 clearly faster
    ([1.0, 1.0, 1.0], [0.97, 0.98, 0.96], "fp32"),  # within the margin: a tie goes to the exact fp32
    ([0.4, 0.5, 0.4], [0.9, 0.8, 3.0], "fp32"),     # bf16 slower (its casts cost more than its GEMMs save)
    ([1.0, 9.0, 1.0], [0.6, 0.6, 0.6], "bf16"),     # medians: one outlier step decides nothing
])
def test_probe_picks_the_faster_median_by_the_margin(monkeypatch, fp32, bf16, want):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    calls = []

    def probe():
        calls.append(1)
        return {"fp32": fp32, "bf16": bf16}

    key = ("cpu", "abmil", 64, 9)
    choice = precision.choose_precision("auto", CPU, fit_steps=precision.MIN_STEPS_TO_PROBE, key=key, probe=probe)
    assert choice.precision == want and "probe" in choice.reason
    assert set(choice.step_seconds) == {"fp32", "bf16"} and want in choice.describe()
    again = precision.choose_precision("auto", CPU, fit_steps=10**6, key=key, probe=probe)
    assert again.precision == want and "remembered" in again.reason and len(calls) == 1  # one probe per key


def test_short_fits_follow_the_stated_rule(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    short = precision.MIN_STEPS_TO_PROBE - 1
    small = precision.choose_precision("auto", CPU, fit_steps=short, patches_per_step=800, feature_dim=64,
                                       probe=_never)
    big = precision.choose_precision("auto", CPU, fit_steps=short, patches_per_step=4096, feature_dim=1024,
                                     probe=_never)
    tiny = precision.choose_precision("auto", CPU, fit_steps=short, patches_per_step=40, feature_dim=256,
                                      probe=_never)
    assert (tiny.precision, small.precision, big.precision) == ("fp32", "bf16", "bf16")
    assert all("rule" in c.reason for c in (tiny, small, big))
    assert precision.rule_precision(precision.RULE_MIN_PATCHES - 1) == "fp32"
    assert precision.rule_precision(precision.RULE_MIN_PATCHES) == "bf16"


def test_time_steps_interleaves_warms_up_and_prepares_each_round_untimed():
    events, clock = [], [0.0]

    def step(p):
        events.append(p)
        clock[0] += {"fp32": 2.0, "bf16": 1.0}[p] + (100.0 if len(events) <= 2 else 0.0)  # warm-up is slow

    def prepare(r):
        events.append(f"prepare{r}")
        clock[0] += 50.0  # collation: not timed

    seconds = precision.time_steps(step, 3, timer=lambda: clock[0], prepare=prepare)
    assert seconds == {"fp32": [2.0] * 3, "bf16": [1.0] * 3}
    assert events == [x for r in range(4) for x in (f"prepare{r}", "fp32", "bf16")]


def test_time_steps_runs_more_rounds_while_the_steps_are_short():
    clock = [0.0]

    def step(p):
        clock[0] += 0.01

    seconds = precision.time_steps(step, 3, timer=lambda: clock[0], min_seconds=1.0, max_steps=15)
    assert len(seconds["fp32"]) == len(seconds["bf16"]) == 15  # 10 ms steps: up to the cap, not 3 noisy rounds
    seconds = precision.time_steps(step, 3, timer=lambda: clock[0], min_seconds=0.05, max_steps=15)
    assert len(seconds["fp32"]) == 3


def test_probe_compares_rounds_pairwise():
    # each round is a new batch of another size: the medians of each precision (1.2 s vs 1.3 s) compare different
    # batches; paired, bf16 took 0.8x fp32's time on two batches of three
    fp32, bf16 = [1.0, 4.0, 1.2], [0.8, 3.2, 1.3]
    assert precision.pick_from_probe({"fp32": fp32, "bf16": bf16})[0] == "bf16"
    assert precision.pick_from_probe({"fp32": [1.0, 3.0, 3.0], "bf16": [3.0, 3.0, 3.0]})[0] == "fp32"


def test_a_bf16_pass_holds_twice_the_float32_budget():
    assert train_step.pass_budget(2048, "fp32") == 2048 and train_step.pass_budget(2048, "bf16") == 4096
    assert train_step.pass_budget(None, "bf16") is None


def _fake_probe_timings(monkeypatch, costs: dict[str, float]) -> list[dict]:
    """The fit's real probe runs its real steps; the clock it reads advances by ``costs`` per step."""
    seen = []

    def fake_time_steps(step, steps, prepare=None):
        clock = [0.0]

        def timed(p):
            step(p)
            clock[0] += costs[p]
        seconds = precision.time_steps(timed, steps, timer=lambda: clock[0], prepare=prepare)
        seen.append(seconds)
        return seconds

    monkeypatch.setattr(train_step, "time_steps", fake_time_steps)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "MIN_STEPS_TO_PROBE", 1)
    return seen


@pytest.mark.parametrize(("costs", "want"), [({"fp32": 1.0, "bf16": 0.5}, "bf16"),
                                             ({"fp32": 0.5, "bf16": 1.0}, "fp32")])
def test_auto_fit_probes_records_the_choice_and_trains_exactly_as_that_precision(monkeypatch, costs, want):
    cohort, test = easy_survival_cohort(n=24), easy_survival_cohort(n=6, seed=3)
    seen = _fake_probe_timings(monkeypatch, costs)
    auto = create_aggregator("abmil", max_epochs=2, seed=0, device="cpu").fit(cohort)
    assert len(seen) == 1 and len(seen[0]["fp32"]) == precision.PROBE_STEPS
    assert auto.precision == "auto" and auto.precision_ == want and "probe" in auto.precision_reason_
    fixed = create_aggregator("abmil", max_epochs=2, seed=0, device="cpu", precision=want).fit(cohort)
    # the probe left no trace: weights, RNG streams and subsample draws as in the fit with `want` given
    for (name, p), q in zip(auto.model_.state_dict().items(), fixed.model_.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert auto.history_ == fixed.history_
    pd_auto, pd_fixed = auto.predict(test), fixed.predict(test)
    assert np.array_equal(pd_auto["risk"].to_numpy(), pd_fixed["risk"].to_numpy())


def test_the_choice_reaches_the_fold_results(monkeypatch):
    from msrl_plugin.evaluation.crossval import run_fold
    from msrl_plugin.evaluation.splits import Fold

    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    cohort = easy_survival_cohort(n=30)
    fold = Fold(0, cohort.case_ids[:24], cohort.case_ids[24:])
    _, _, _, extra = run_fold(cohort, fold, "abmil", {"max_epochs": 1, "device": "cpu"})
    assert extra["precision"] == "fp32" and "no native bf16" in extra["precision_reason"]


@pytest.mark.parametrize("seed", range(5))
def test_patch_chunks_respect_the_budget_and_keep_every_bag_in_order(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9000, size=40).tolist()
    index = torch.from_numpy(rng.permutation(40)[:8])
    for cap, budget in ((4096, 4096), (4096, 8192), (None, 5000), (100, 250)):
        chunks = patch_chunks(index, sizes, cap, budget)
        assert torch.equal(torch.cat(chunks), index)
        for chunk in chunks:
            held = sum(min(sizes[i], cap or sizes[i]) for i in chunk.tolist())
            assert held <= budget or len(chunk) == 1
        # greedy: a chunk closes only when the next bag would not fit
        for a, b in zip(chunks, chunks[1:], strict=False):
            held = sum(min(sizes[i], cap or sizes[i]) for i in torch.cat([a, b[:1]]).tolist())
            assert held > budget
    small = patch_chunks(torch.arange(8), [100] * 8, 4096, 4096)
    assert len(small) == 1  # small bags still batch whole


def test_chunked_step_has_the_whole_batchs_loss_and_gradient():
    torch.manual_seed(0)
    bags = [torch.randn(n, 12) for n in (30, 7, 50, 22, 41)]
    targets = {"bins": torch.tensor([0, 1, 3, 2, 1]), "censorship": torch.tensor([0, 1, 0, 0, 1])}
    data = CaseData([f"c{i}" for i in range(5)], bags, torch.zeros(5, 0), torch.zeros(5, dtype=torch.bool),
                    targets)
    model = abmil_nn.ABMIL(12, 4, 16, 8, dropout=0.0)

    def loss_fn(m, batch):
        return nll_survival_loss(m(batch.x, batch.mask)[0], batch.targets["bins"], batch.targets["censorship"])

    index, sizes = torch.tensor([3, 0, 4, 1, 2]), [len(b) for b in bags]
    grads, losses = [], []
    for budget in (None, 60, 1):
        chunks = train_step.collate_step(data, index, None, None, budget, sizes, CPU)
        assert all(int(c.mask.sum()) <= (budget or 10**9) or len(c.index) == 1 for c in chunks)
        model.zero_grad()
        losses.append(train_step.backward_step(model, chunks, loss_fn, torch.autocast("cpu", enabled=False)))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert [len(train_step.collate_step(data, index, None, None, b, sizes, CPU)) for b in (None, 60, 1)] == [1, 3, 5]
    for other, loss in zip(grads[1:], losses[1:], strict=True):
        torch.testing.assert_close(loss, losses[0])
        for g, h in zip(grads[0], other, strict=True):
            torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5)


def test_batch_patches_fit_is_the_same_training_as_whole_batches(monkeypatch):
    cohort = easy_survival_cohort(n=24)
    seen = []
    collate = train_step.collate

    def spy(data, index, *args):
        batch = collate(data, index, *args)
        seen.append((len(index), int(batch.mask.sum())))
        return batch

    monkeypatch.setattr(train_step, "collate", spy)
    kw = {"max_epochs": 2, "seed": 0, "device": "cpu", "dropout": 0.0, "precision": "fp32", "max_patches": 40}
    whole = create_aggregator("abmil", batch_patches=None, **kw).fit(cohort)
    assert all(n == 8 for n, _ in seen)
    seen.clear()
    chunked = create_aggregator("abmil", batch_patches=90, **kw).fit(cohort)
    assert all(patches <= 90 or n == 1 for n, patches in seen) and max(n for n, _ in seen) < 8
    for (name, p), q in zip(whole.model_.named_parameters(), chunked.model_.parameters(), strict=True):
        if name != "pool.attn_w.bias":  # softmax ignores it: its gradient is 0 up to rounding, which Adam scales up
            torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)
    np.testing.assert_allclose([h["train_loss"] for h in whole.history_],
                               [h["train_loss"] for h in chunked.history_], rtol=1e-5)


def test_bf16_shape_bucketing_is_the_same_function(monkeypatch):
    torch.manual_seed(0)
    pool = abmil_nn.GatedAttentionPool(12, 16, 8, dropout=0.0)
    x = torch.randn(3, 10, 12)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1:, 6:] = False  # 22 real patches: padded to 64 under autocast
    assert abmil_nn._shape_padding(22, CPU) == 0  # float32: never padded
    outs = []
    for bucket in (1, abmil_nn.SHAPE_BUCKET):
        monkeypatch.setattr(abmil_nn, "SHAPE_BUCKET", bucket)
        pool.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert abmil_nn._shape_padding(22, CPU) == (-22) % bucket
            pooled, scores = pool(x, mask)
        pooled.float().sum().backward()
        outs.append((pooled.float(), scores.float(), pool.fc[1].weight.grad.clone()))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    assert torch.isinf(outs[1][1][1, 6:]).all()  # padding still scores -inf
