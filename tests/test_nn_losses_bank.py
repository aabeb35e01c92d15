"""InfoNCE with a memory bank of extra negatives (MSRL's genomic L_f_align)."""
import torch

from msrl_plugin.nn.losses import info_nce, info_nce_with_bank


def test_bank_without_allowed_rows_is_the_one_directional_info_nce():
    g = torch.Generator().manual_seed(0)
    a, b, bank = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    none = torch.zeros(6, 9, dtype=torch.bool)
    logits = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).t() / 0.2
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(6))
    torch.testing.assert_close(info_nce_with_bank(a, b, bank, none), expected)
    torch.testing.assert_close(info_nce(a, a), info_nce_with_bank(a, a, bank, none))


def test_bank_negatives_raise_the_loss_and_forbidden_rows_are_ignored():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 8, generator=g)
    b = a + 0.1 * torch.randn(4, 8, generator=g)
    hard = a.repeat(3, 1) + 0.05 * torch.randn(12, 8, generator=g)  # near-copies of the queries
    allowed = torch.ones(4, 12, dtype=torch.bool)
    none = torch.zeros(4, 12, dtype=torch.bool)
    assert info_nce_with_bank(a, b, hard, allowed) > info_nce_with_bank(a, b, hard, none) + 0.5
    # forbidding a row removes its influence exactly
    partial = allowed.clone()
    partial[:, 5] = False
    torch.testing.assert_close(info_nce_with_bank(a, b, hard, partial),
                               info_nce_with_bank(a, b, torch.cat([hard[:5], hard[6:]]),
                                                  torch.ones(4, 11, dtype=torch.bool)))
