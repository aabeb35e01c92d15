"""FeatureBuffer FIFO semantics, leakage masks and checkpoint round trip."""

import pytest
import torch

from msrl_plugin.nn import FeatureBuffer


def _rows(start, n, dim=3):
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def test_initialise_partial_and_fifo_wraparound():
    buf = FeatureBuffer(5, 3)
    buf.initialise(_rows(0, 3), ["a", "b", "c"])
    assert len(buf) == 3 and buf.ptr.item() == 3
    buf.enqueue(_rows(10, 3), ["d", "e", "f"])  # fills rows 3, 4 then overwrites row 0 (oldest)
    feats, ids, valid = buf.snapshot()
    assert ids == ["f", "b", "c", "d", "e"] and valid.all() and buf.ptr.item() == 1
    assert feats[:, 0].tolist() == [12, 1, 2, 10, 11]
    buf.enqueue(_rows(20, 2), ["g", "h"])
    assert buf.snapshot()[1] == ["f", "g", "h", "d", "e"]
    # a batch larger than K keeps its newest K rows
    buf.enqueue(_rows(30, 7), [f"x{i}" for i in range(7)])
    assert sorted(buf.snapshot()[1]) == [f"x{i}" for i in range(2, 7)]
    assert buf.ptr.item() == (3 + 5) % 5  # past the 5 rows written


def test_initialise_truncates_and_enqueue_detaches():
    buf = FeatureBuffer(2, 3)
    buf.initialise(_rows(0, 4), list("abcd"))
    assert buf.snapshot()[1] == ["a", "b"] and buf.ptr.item() == 0
    x = torch.randn(1, 3, requires_grad=True)
    buf.enqueue(x * 2, ["z"])
    assert not buf.features.requires_grad and buf.snapshot()[1] == ["z", "b"]
    snap = buf.snapshot()[0]
    buf.enqueue(_rows(9, 2), ["p", "q"])
    assert snap[0, 0] != 9  # snapshots are copies
    with pytest.raises(ValueError):
        buf.enqueue(torch.zeros(2, 4), ["a", "b"])
    with pytest.raises(ValueError):
        buf.enqueue(torch.zeros(2, 3), ["a"])


def test_exclusion_mask_and_contains_only():
    buf = FeatureBuffer(6, 2)  # K larger than the number of cases: rows 4, 5 stay invalid
    buf.initialise(torch.randn(4, 2), ["a", "b", "a", "c"])
    ex = buf.exclusion_mask(["a", "c", "unknown"])
    assert ex.tolist() == [
        [True, False, True, False, False, False],
        [False, False, False, True, False, False],
        [False] * 6,
    ]
    assert buf.contains_only({"a", "b", "c"}) and not buf.contains_only({"a", "b"})
    assert len(buf) == 4


def test_checkpoint_round_trip(tmp_path):
    buf = FeatureBuffer(4, 3)
    buf.initialise(torch.randn(3, 3), ["TCGA-01", "TCGA-02", "TCGA-03"])
    buf.enqueue(torch.randn(2, 3), ["TCGA-04", "TCGA-01"])
    torch.save(buf.state_dict(), tmp_path / "buf.pt")
    fresh = FeatureBuffer(4, 3)
    fresh.load_state_dict(torch.load(tmp_path / "buf.pt", weights_only=True))
    for a, b in zip(buf.snapshot(), fresh.snapshot(), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert fresh.ptr.item() == buf.ptr.item()
    assert torch.equal(fresh.exclusion_mask(["TCGA-01"]), buf.exclusion_mask(["TCGA-01"]))
    fresh.enqueue(torch.randn(1, 3), ["TCGA-05"])  # the restored vocabulary keeps working
    assert fresh.snapshot()[1].count("TCGA-05") == 1
