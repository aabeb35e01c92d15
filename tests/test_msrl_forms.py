"""MSRL's named forms: msrl_paper equals method.md, each ablation is its base plus exactly one change, every
keyword is checked before any bag is read, and an ignored value is said once."""
import re
import warnings

import pytest
from _cli import run
from sklearn.utils._param_validation import StrOptions

from msrl_plugin.aggregators.msrl_forms import BASE_FORMS, CHANGES
from msrl_plugin.registry import create_aggregator, get_aggregator_class, list_aggregators

STRUCTURE = ("modality", "graph", "buffer_source", "use_pretraining", "uses_genomics", "genomics_at_test")


def _table_row(text: str, item: str) -> str:
    row = next((line for line in text.splitlines() if line.startswith(f"| {item} |")), None)
    assert row is not None, f"method.md §11 has no row {item!r}"
    return row.split("|")[2].strip()


def _number(text: str) -> float:
    return float(re.search(r"\d+(?:\.\d+)?(?:e-?\d+)?", text).group(0))


def test_msrl_paper_resolves_to_the_values_of_method_md(shared_dir):
    table = (shared_dir / "method.md").read_text(encoding="utf-8")
    table = table[table.index("## 11. Consolidated hyper-parameter table"):]
    p = get_aggregator_class("msrl_paper")().get_params()
    assert p["embed_dim"] == _number(_table_row(table, "modality embedding d"))          # 768
    assert p["k"] == _number(_table_row(table, "k"))                                       # 10
    assert p["ema_momentum"] == _number(_table_row(table, "EMA momentum"))                 # 0.99
    assert p["temperature"] == _number(_table_row(table, "InfoNCE τ"))                     # 0.2
    assert p["anchor_tau"] == _number(_table_row(table, "anchor bootstrap τ_b"))           # 0.999
    buffer = _table_row(table, "buffer")
    assert p["buffer_size"] == int(re.search(r"K = (\d+)", buffer).group(1))               # 256
    dropedge, mask = (_number(v) for v in _table_row(table, "DropEdge, feat-mask (pretrain)").split("/"))
    assert (p["dropedge"], p["maskfeat_rate_learner"], p["maskfeat_rate_anchor"]) == (dropedge, mask, mask)
    gcn = _table_row(table, "GCN")
    assert p["gcn_dropout"] == float(re.search(r"([\d.]+) \(finetune\)", gcn).group(1))     # 0.25
    pre = _table_row(table, "pretrain opt")  # Adam 1e-3, wd 0, 200 ep, batch 512 or full
    assert p["pretrain_lr"] == float(re.search(r"Adam ([\d.e-]+)", pre).group(1))
    assert p["pretrain_epochs"] == int(re.search(r"(\d+) ep", pre).group(1))
    assert p["pretrain_batch_size"] == int(re.search(r"batch (\d+)", pre).group(1))
    fine = _table_row(table, "finetune opt")  # Adam 1e-4, wd 1e-5, 30 ep, batch 32
    assert p["lr"] == float(re.search(r"Adam ([\d.e-]+)", fine).group(1))
    assert p["reg"] == float(re.search(r"wd ([\d.e-]+)", fine).group(1))
    assert p["max_epochs"] == int(re.search(r"(\d+) ep", fine).group(1))
    assert p["batch_size"] == int(re.search(r"batch (\d+)", fine).group(1))
    assert p["align_weight"] == 1.0  # L_fine_tune = L_f + L_g + L_s + L_task (unit weights) [P]
    assert p["n_bins"] == 4 and p["alpha_surv"] == 0.0  # 4 quartile bins, NLL alpha = 0 [B]
    # §5: head(z), no borrowed risk head, f_align over the fused features, A_r = GSL_F(F), graph-level L_inter,
    # phi_G frozen, and none of the project's additions (teacher, distillation, stage-1 hold-out)
    assert (p["readout"], p["borrow"], p["f_align"], p["similarity"], p["pretrain_inter_level"]) == (
        "node", "none", "paper", "fused", "graph")
    assert (p["genomic_teacher_steps"], p["distill_weight"], p["pretrain_holdout"]) == (0, 0.0, 0.0)
    assert p["train_gene_encoder"] is False and p["learner_layers"] == 2 and p["learner_activation"] == "tanh"


@pytest.mark.parametrize("base", sorted(BASE_FORMS))
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_form_differs_from_its_base_in_exactly_the_named_component(base, change):
    base_cls, cls = get_aggregator_class(base), get_aggregator_class(f"{base}_{change}")
    assert issubclass(cls, base_cls) and cls.change == change
    assert cls().get_params() == base_cls().get_params()
    differs = {a for a in STRUCTURE if getattr(cls, a) != getattr(base_cls, a)}
    assert differs == set(CHANGES[change].structure)


def test_list_models_shows_both_forms_and_every_ablation_over_each(capsys):
    assert run(["list-models"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    expected = {f"{b}_{c}" for b in BASE_FORMS for c in CHANGES} | set(BASE_FORMS)
    assert expected <= listed and expected <= set(list_aggregators())
    assert run(["list-models", "--params", "msrl_paper"]) == 0
    out = capsys.readouterr().out
    assert "Stage 1 (graph-structure pre-training) parameters:" in out and "768 [P]" in out


def test_every_parameter_of_every_model_has_a_constraint():
    for name in list_aggregators():
        cls = get_aggregator_class(name)
        missing = set(cls._get_param_names()) - set(cls._parameter_constraints)
        assert not missing, f"{name}: no constraint for {sorted(missing)}"


def _enum_parameters():
    for name in list_aggregators():
        cls = get_aggregator_class(name)
        for param, rules in cls._parameter_constraints.items():
            if param in cls._get_param_names() and any(isinstance(r, StrOptions) for r in rules):
                yield name, param


@pytest.mark.parametrize(("model", "param"), sorted(set(_enum_parameters())))
def test_an_enum_typo_is_one_error_line_before_any_bag_is_read(model, param, tmp_path, capsys):
    # neither the features folder nor the clinical table exists: reaching them would be a different error
    code = run(["train", "--model", model, "--param", f"{param}=typo_value", "--features", tmp_path / "none",
                "--clinical", tmp_path / "none.csv", "--results-dir", tmp_path / "out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert param in err[0] and "typo_value" in err[0] and "features" not in err[0]
    assert not (tmp_path / "out").exists()


def test_an_ignored_value_is_said_once_and_defaults_say_nothing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("msrl", "msrl_paper", "msrl_h", "msrl_random_gsl"):
            create_aggregator(name)
        assert not caught
        create_aggregator("msrl_paper", distill_weight=0.5)
        create_aggregator("msrl", candidate_keys="float32")
        create_aggregator("msrl_random_gsl", pretrain_lr=0.01)
    said = [str(w.message) for w in caught]
    assert len(said) == 3
    assert "distill_weight=0.5 is ignored: borrow='none'" in said[0]
    assert "candidate_keys='float32' is ignored" in said[1] and "buffer_candidates=None" in said[1]
    assert "pretrain_lr=0.01 is ignored" in said[2]
