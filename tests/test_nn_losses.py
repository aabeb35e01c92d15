"""InfoNCE, balanced BCE and the EMA update."""

import math

import torch
import torch.nn.functional as F

from msrl_plugin.nn import balanced_bce, ema_update, info_nce, make_target


def test_info_nce_equals_hand_computation():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    sim = F.cosine_similarity(a[:, None], b[None], dim=-1) / 0.2
    rows = -sum(math.log(sim[i].exp()[i] / sim[i].exp().sum()) for i in range(6)) / 6
    cols = -sum(math.log(sim[:, i].exp()[i] / sim[:, i].exp().sum()) for i in range(6)) / 6
    assert abs(info_nce(a, b).item() - (rows + cols) / 2) < 1e-5


def test_info_nce_limits():
    torch.manual_seed(0)
    n = 16
    a, b = torch.randn(n, 4096), torch.randn(n, 4096)
    assert abs(info_nce(a, b).item() - math.log(n)) < 0.05
    e = torch.eye(n) * 3
    assert info_nce(e, e, temperature=0.05).item() < 1e-6
    assert info_nce(e, e).item() < info_nce(a, b).item()


def test_balanced_bce_equals_hand_formula():
    torch.manual_seed(0)
    p = torch.rand(5, 9)
    target = torch.relu(torch.randn(5, 9)) * (torch.rand(5, 9) < 0.3)
    y = (target > 0).float()
    c1, c0 = y.sum(), (1 - y).sum()
    a0, a1 = (c0 + c1) / (2 * c0), (c0 + c1) / (2 * c1)
    pc = p.clamp(1e-6, 1 - 1e-6)
    expected = -(a1 * y * pc.log() + a0 * (1 - y) * (1 - pc).log()).mean()
    torch.testing.assert_close(balanced_bce(p, target), expected)
    # the weights balance the classes: each class contributes half of a constant-p loss
    half = balanced_bce(torch.full((5, 9), 0.5), target)
    torch.testing.assert_close(half, torch.tensor(math.log(2)))


def test_balanced_bce_single_class_and_valid_mask():
    p = torch.rand(4, 4, requires_grad=True)
    for target in (torch.zeros(4, 4), torch.ones(4, 4)):
        loss = balanced_bce(p, target)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
    # dropping the only positive leaves only the negative class
    target = torch.zeros(4, 4)
    target[0, 0] = 1
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[0, 0] = False
    pc = p.detach().clamp(1e-6, 1 - 1e-6)
    expected = -(0.5 * (1 - pc).log())[valid].mean()
    torch.testing.assert_close(balanced_bce(p.detach(), target, valid=valid), expected)
    # negative cosines are clamped, no NaN
    assert torch.isfinite(balanced_bce(torch.full((2, 2), -0.5), torch.eye(2)))


def test_ema_update_formula_and_target_frozen():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()(torch.randn(8, 3))  # moves BatchNorm running stats
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, online, 0.9)
    for name, p in online.named_parameters():
        torch.testing.assert_close(
            dict(target.named_parameters())[name], 0.9 * before[name] + 0.1 * p.detach(), rtol=0, atol=1e-7
        )
    torch.testing.assert_close(target[1].running_mean, online[1].running_mean)
    assert target[1].num_batches_tracked == before["1.num_batches_tracked"]
    ema_update(target, online, 0.0)
    for (_, pt), (_, po) in zip(target.named_parameters(), online.named_parameters(), strict=True):
        assert torch.equal(pt, po)
