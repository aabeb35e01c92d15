"""glibc heap thresholds for CPU training (msrl_plugin.heap): applied once, only on the CPU, switchable off."""
import pytest
import torch
from _cohorts import easy_survival_cohort

from msrl_plugin import heap
from msrl_plugin.aggregators.abmil import ABMILAggregator


@pytest.fixture(autouse=True)
def _fresh_process():
    """Each test sees a process where nothing was applied yet, and leaves none of its fakes cached."""
    heap._apply.cache_clear()
    yield
    heap._apply.cache_clear()


def _recorder(calls):
    def mallopt(param, value):
        calls.append((param, value))
        return 1
    return mallopt


def test_thresholds_are_set_once_per_process_and_only_for_cpu_fits(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_glibc_mallopt", lambda: _recorder(calls))
    monkeypatch.delenv(heap.ENV, raising=False)
    assert heap.keep_freed_memory(torch.device("cuda")) is False and calls == []
    assert heap.keep_freed_memory(torch.device("cpu")) is True
    assert calls == [(heap.M_MMAP_THRESHOLD, 32 * 2**20), (heap.M_TRIM_THRESHOLD, 512 * 2**20)]
    assert heap.keep_freed_memory(torch.device("cpu")) is True and len(calls) == 2  # once per process


def test_switched_off_by_the_environment_or_absent_without_glibc(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_glibc_mallopt", lambda: _recorder(calls))
    monkeypatch.setenv(heap.ENV, "0")
    assert heap.keep_freed_memory(torch.device("cpu")) is False and calls == []
    heap._apply.cache_clear()
    monkeypatch.delenv(heap.ENV)
    monkeypatch.setattr(heap, "_glibc_mallopt", lambda: None)  # musl, macOS, Windows
    assert heap.keep_freed_memory(torch.device("cpu")) is False


def test_a_refused_threshold_reports_not_applied(monkeypatch):
    monkeypatch.delenv(heap.ENV, raising=False)
    monkeypatch.setattr(heap, "_glibc_mallopt", lambda: (lambda param, value: 0))
    assert heap.keep_freed_memory(torch.device("cpu")) is False


def test_a_cpu_fit_applies_them(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_glibc_mallopt", lambda: _recorder(calls))
    monkeypatch.delenv(heap.ENV, raising=False)
    ABMILAggregator(max_epochs=1, device="cpu", seed=0).fit(easy_survival_cohort(n=12), progress=False)
    assert len(calls) == 2
