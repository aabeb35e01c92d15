"""The training speed paths (issue 14): precision auto, the cheaper dropout, the stacked attention GEMM,
fused Adam. Behaviour only: no timing is asserted here (timings live in benchmarks/)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from _cohorts import easy_survival_cohort

from msrl_plugin import precision
from msrl_plugin.nn.abmil import GatedAttentionPool
from msrl_plugin.nn.dropout import FastDropout, fast_dropout
from msrl_plugin.nn.optim import make_adam
from msrl_plugin.registry import create_aggregator


def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": {"avx", "avx2", "fma"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision.resolve_precision("auto", cpu) == "fp32"  # AVX2 only (the development machine)
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "avx512f", "avx512_bf16"})
    assert precision.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_AMX")
    assert precision.resolve_precision("auto", cpu) == "bf16"
    assert precision.resolve_precision("fp32", cpu) == "fp32" and precision.resolve_precision("bf16", cpu) == "bf16"


def test_cpu_flags_reads_proc_cpuinfo_style_files(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(str(info)) == {"fpu", "avx2", "amx_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()


def test_auto_precision_trains_and_records_what_it_chose(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    model = create_aggregator("abmil", max_epochs=1, seed=0, device="cpu").fit(easy_survival_cohort(n=20))
    assert model.precision == "auto" and model.precision_ == "fp32"
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    precision.forget_decisions()
    model = create_aggregator("abmil", max_epochs=1, seed=0, device="cpu").fit(easy_survival_cohort(n=20))
    # 3 steps: too short to probe; the rule takes bf16 for a ~320-patch step (issue 23)
    assert model.precision_ == "bf16" and "rule" in model.precision_reason_
    model = create_aggregator("abmil", max_epochs=1, seed=0, device="cpu", batch_size=1)
    assert model.fit(easy_survival_cohort(n=20)).precision_ == "fp32"  # ~40 patches a step: fp32
    model = create_aggregator("abmil", max_epochs=1, seed=0, device="cpu", precision="bf16")
    model.fit(easy_survival_cohort(n=20))
    assert model.precision_ == "bf16"
    assert model.predict_logits(model._case_data(easy_survival_cohort(n=5))).dtype == torch.float32


def test_fast_dropout_keeps_each_entry_with_probability_one_minus_p_and_scales_it():
    torch.manual_seed(0)
    out = fast_dropout(torch.ones(400, 500), 0.25)
    kept = out > 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    assert torch.allclose(out[kept], torch.tensor(1 / 0.75))
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(torch.ones(400, 500), 0.25), out)  # seeded like torch's own dropout
    x = torch.randn(7, 3, requires_grad=True)
    y = fast_dropout(x, 0.5)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2)  # gradient = the same mask and scale
    assert fast_dropout(x, 0.5, training=False) is x and fast_dropout(x, 0.0) is x
    module = FastDropout(0.3).eval()
    assert module(x) is x and module.state_dict() == {}
    assert torch.count_nonzero(fast_dropout(torch.ones(11), 1.0)) == 0


def test_fast_dropout_bits_per_element_keep_the_probability_exact_and_neighbours_independent():
    torch.manual_seed(1)
    kept = fast_dropout(torch.ones(1000, 400), 0.25) > 0  # 8 bits per entry, 4 entries per random word
    assert abs(kept.float().mean().item() - 0.75) < 0.003
    pairs = kept.reshape(-1, 4)  # entries that share one 32-bit word
    assert abs((pairs[:, 0] & pairs[:, 1]).float().mean().item() - 0.75 ** 2) < 0.004
    assert abs((pairs[:, 2] & pairs[:, 3]).float().mean().item() - 0.75 ** 2) < 0.004
    kept = fast_dropout(torch.ones(1000, 400), 0.1) > 0  # 0.9 * 256 is no whole number: 16 bits per entry
    assert abs(kept.float().mean().item() - 0.9) < 0.003
    x = torch.randn(5, 3).bfloat16()  # 15 entries: the last random word is partly used
    y = fast_dropout(x, 0.25)
    kept = y != 0
    assert y.dtype == torch.bfloat16 and torch.equal(y[kept], x[kept] * torch.tensor(1 / 0.75).bfloat16())


def test_stacked_attention_gemm_equals_clams_two_branch_layers():
    torch.manual_seed(0)
    pool = GatedAttentionPool(12, 16, 8).eval()
    x = torch.randn(3, 10, 12)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1:, 7:] = False
    h = pool.fc(x)
    clam = pool.attn_w(pool.attn_a(h) * pool.attn_b(h)).squeeze(-1)  # CLAM's Attn_Net_Gated
    torch.testing.assert_close(pool.score(h), clam)
    pooled, scores = pool(x, mask)
    want = torch.stack([torch.softmax(clam[b][mask[b]], 0) @ h[b][mask[b]] for b in range(3)])
    torch.testing.assert_close(pooled, want, atol=1e-5, rtol=1e-5)
    assert set(pool.state_dict()) >= {"attn_a.0.weight", "attn_b.0.weight", "fc.1.weight"}  # checkpoints load


def test_make_adam_uses_the_fused_kernel_with_the_same_updates():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    fused = make_adam(list(a.parameters()), 1e-2, 1e-3)
    plain = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3)
    assert fused.param_groups[0]["fused"]
    for _ in range(5):
        x = torch.randn(8, 4)
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            F.mse_loss(model(x), torch.zeros(8, 3)).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    groups = make_adam([{"params": list(a.parameters())}], 1e-3, 0.0)
    assert groups.param_groups[0]["fused"]


def test_collate_subsamples_into_place_and_zeroes_only_the_padding():
    from msrl_plugin.batching import CaseData, collate

    bags = [torch.arange(12.0).reshape(6, 2), torch.ones(3, 2) * 7]
    data = CaseData(["a", "b"], bags, torch.zeros(2, 0), torch.zeros(2, dtype=torch.bool), {})
    batch = collate(data, torch.tensor([0, 1]), max_patches=4, generator=torch.Generator().manual_seed(0))
    assert batch.x.shape == (2, 4, 2) and batch.mask.sum(1).tolist() == [4, 3]
    rows = batch.x[0, :, 0].long().tolist()
    assert rows == sorted(rows) and {r % 2 for r in rows} == {0}  # whole rows of bag a, in bag order
    assert torch.equal(batch.x[1, :3], bags[1]) and torch.equal(batch.x[1, 3], torch.zeros(2))
