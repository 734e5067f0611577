"""The LoRA reproduction: a smoke run through MLflow in a temporary store, every variant adapting the pretraining
run's weights (never retrained), equal budgets, the measurements (memory, decoding, subspace similarity) against
references, and one-line errors for bad input."""

import json

import pytest
import torch
from mlflow.artifacts import download_artifacts
from safetensors.torch import load_file

from common.config import TrainConfig, load_config
from common.decoding import PromptDecoder, greedy
from common.errors import PaperzooError
from common.experiment import load_paper
from common.models.gpt import GPTConfig, build_gpt
from common.runs import RunRef
from common.testing import assert_one_line_error, run_cli, smoke_reproduction
from common.tracking import client
from papers.lora.data import pair_batch
from papers.lora.experiment import target_variants
from papers.lora.lora import gpt_targets, inject, lora_modules, lora_state_dict, n_trainable
from papers.lora.measure import mean_phi, saved_As, slice_As, subspace_similarity, training_memory

TARGETS = ("captions", "de_en")


def plan_of(scale: str, *overrides: str):
    paper = load_paper("lora")
    cfg = load_config(paper.schema, paper.path / "configs", [f"scale={scale}", *overrides])
    return cfg, paper.plan(cfg)


def mlflow_runs() -> dict:
    mlflow_client = client()
    found = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("lora").experiment_id])
    return {(r.data.tags["task"], r.data.tags["variant"]): r for r in found}


def final_files(run, folder) -> tuple[dict, dict]:
    path = download_artifacts(run_id=run.info.run_id, artifact_path="model", dst_path=str(folder))
    return json.loads(open(f"{path}/model.json").read()), load_file(f"{path}/model.safetensors")


@pytest.mark.slow
def test_smoke_reproduction_adapts_the_pretraining_run_and_measures_every_claim(lab):
    # two runs at a time (common.workers): the adapters wait for the pretraining run they start from
    readme, metrics = smoke_reproduction(lab, "lora", "workers=2")
    heat_map = "subspace_r8_vs_r64_s0.png"  # Fig. 3 from the two runs' saved A's
    assert f"(figures/{heat_map})" in readme and (lab / "reports" / "lora" / "figures" / heat_map).is_file()
    runs = mlflow_runs()
    assert sum(task == "pretrain" for task, _ in runs) == 1  # pretrained once, then only adapted
    pretrain = runs[("pretrain", "gpt")]
    _, pretrained = final_files(pretrain, lab / "pretrain")
    base_meta, base_weights = final_files(runs[("captions", "base")], lab / "base")
    assert base_meta["weights"] == "all" and base_weights.keys() == pretrained.keys()
    assert all(torch.equal(base_weights[k], pretrained[k]) for k in pretrained)  # 0 steps: the pretrained GPT
    for (task, variant), run in runs.items():
        if task not in TARGETS or variant in ("base",) or variant.startswith("full_ft"):
            continue  # FT trains every weight, so it saves them all (no base recorded)
        meta, weights = final_files(run, lab / f"{task}-{variant}")
        assert meta["weights"] == "trainable" and meta["init_from"]["run_id"] == pretrain.info.run_id, variant
        assert len(weights) < len(pretrained)
    subspace_meta, _ = final_files(runs[("subspace", "r8_vs_r64")], lab / "subspace")
    assert subspace_meta["init_from"]["run_id"] == runs[("captions", "rank_r64")].info.run_id

    lora = metrics[("captions", "lora")]
    assert lora["model/n_trainable"] == 2 * 2 * 4 * (32 + 32)  # 2 layers, W_q and W_v, r (d_in + d_out)
    assert lora["memory/optimizer_over_ft"] < 0.1 and lora["memory/peak_over_ft_b1"] < 1
    assert {"latency/merged_over_base", "latency/unmerged_over_base", "latency/houlsby_over_base"} <= set(
        lora
    )
    assert metrics[("captions", "full_ft")]["memory/peak_over_ft"] == 1
    assert all(
        0 <= v <= 1 + 1e-9 for k, v in metrics[("subspace", "r8_vs_r64")].items() if k.startswith("subspace/")
    )
    assert {"val/loss", "test/bleu"} <= set(metrics[("de_en", "houlsby")])


@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"], ids=["smoke_preset", "cpu_preset", "gpu_preset"])
def test_every_variant_starts_from_the_pretraining_run_of_the_plan(scale):
    cfg, runs = plan_of(scale)
    assert runs[0].key == "pretrain/gpt" and runs[0].init_from is None
    assert runs[0].trained_seeds(cfg.seeds) == [cfg.seeds[0]]  # pretrained once, whatever the seeds
    pretrained = RunRef("lora", scale, "pretrain", "gpt", cfg.seeds[0])
    targets = [r for r in runs if r.task in TARGETS]
    assert {r.task for r in runs} == {"pretrain", *TARGETS, "subspace"}
    assert all(r.init_from == pretrained for r in targets)
    (subspace,) = [r for r in runs if r.task == "subspace"]
    assert subspace.init_from == RunRef("lora", scale, "captions", "rank_r64", cfg.seeds[0])
    assert subspace.train.max_steps == 0


@pytest.mark.parametrize(
    "scale", ["cpu", "gpu"], ids=["cpu_preset", "gpu_preset"]
)  # "gpu" alone marks a test gpu
def test_every_method_gets_the_same_budget_and_ft_and_lora_an_lr_search(scale):
    cfg, runs = plan_of(scale)
    for task in TARGETS:
        mine = {r.variant: r for r in runs if r.task == task}
        assert mine["base"].train.max_steps == 0
        trained = [r.train for v, r in mine.items() if v != "base"]
        budgets = {(t.max_steps, t.batch_size, t.grad_accum, t.warmup_steps, t.weight_decay) for t in trained}
        assert len(budgets) == 1 and trained[0].max_steps > 0, (task, budgets)
        for method in ("full_ft", "lora"):
            assert len({r.train.lr for v, r in mine.items() if v.startswith(method)}) >= 2
    captions = {r.variant: r for r in runs if r.task == "captions"}
    assert {captions[v].train.lr for v in ("lora", "rank_r1", "rank_r64", "q_only")} == {
        captions["lora"].train.lr
    }


def adapted(run, state: dict):
    """The run's model as the lab prepares it: built, then the base run's weights loaded."""
    torch.manual_seed(0)
    model = run.build_model()
    model.load_state_dict(state)
    return model


def test_each_method_is_applied_after_the_base_weights_load_and_starts_at_the_base_function():
    cfg, runs = plan_of("smoke")
    torch.manual_seed(1)
    base = runs[0].build_model()
    state, idx = base.state_dict(), torch.randint(0, cfg.pretrain.vocab_size, (2, 12))
    counts = {}
    for run in (r for r in runs if r.task == "captions"):
        model = adapted(run, state)
        counts[run.variant] = n_trainable(model)
        if run.variant not in ("houlsby",):  # B = 0, frozen or untouched weights: the base model exactly
            torch.testing.assert_close(model.logits(idx), base.logits(idx), rtol=0, atol=0)
        n_adapters = len(lora_modules(model))
        model.load_state_dict(model.state_dict())  # a later load (resume, a run's tensors over its base)
        assert len(lora_modules(model)) == n_adapters  # is not a second adaptation
    d, layers, total = cfg.pretrain.model.d_model, cfg.pretrain.model.n_layers, base.num_params()
    assert counts["base"] == counts["full_ft"] == total
    assert counts["lora"] == layers * 2 * 4 * (d + d) == counts["q_only"]  # equal budget: W_q at r = 8
    assert counts["rank_r8"] == layers * 2 * 8 * (d + d)
    assert counts["bitfit"] == sum(p.numel() for n, p in base.named_parameters() if n.endswith("bias"))


def test_lora_trains_at_most_two_percent_of_the_cpu_gpt():
    cfg, runs = plan_of("cpu")
    base = runs[0].build_model()
    lora = adapted(next(r for r in runs if r.key == "captions/lora"), base.state_dict())
    assert n_trainable(lora) / base.num_params() <= 0.02


def test_lora_runs_of_one_seed_start_from_unrelated_A():
    _, runs = plan_of("smoke")
    state = runs[0].build_model().state_dict()
    small, large = (
        adapted(next(r for r in runs if r.key == f"captions/rank_r{r_}"), state) for r_ in (8, 64)
    )
    A8, A64 = (next(iter(lora_modules(m).values())).lora_A for m in (small, large))
    assert not torch.equal(A8[:8], A64[:8])  # the same seed, but not the same first rows


@pytest.mark.parametrize("override, needles", [
    ("captions.variants=[lora,prefix]", ("captions: unknown variants ['prefix']",)),
    ("captions.rank=0", ("captions: LoRA ranks must be >= 1, got [0]",)),
    ("translation.ranks=[0,2]", ("translation: LoRA ranks must be >= 1",)),
    ("captions.block_size=999", ("captions.block_size 999 exceeds the base model's positions",)),
    ("captions.subspace=[8,16]", ("captions.subspace [8, 16]",)),
    ("pretrain.corpora=[wikitext]", ("pretrain.corpora ['wikitext']",)),
])  # fmt: skip
def test_bad_config_is_one_error_naming_the_key(override, needles):
    with pytest.raises(PaperzooError) as err:
        plan_of("smoke", override)
    assert "\n" not in str(err.value) and all(n in str(err.value) for n in needles), str(err.value)


def test_bad_config_is_a_one_line_error_from_the_command_line(lab):
    assert_one_line_error(run_cli("-m", "common.reproduce", "lora", "scale=smoke", "captions.rank=0"),
                          "LoRA ranks must be >= 1")  # fmt: skip
    assert not (lab / "runs").exists()  # nothing trained


def test_pair_batch_puts_the_loss_on_the_target_side_only():
    sep, eot = 1, 0
    batch = pair_batch([([5, 6, 7], [8, 9]), ([5] * 20, [9] * 20)], block_size=16, sep=sep, eot=eot)
    assert batch["idx"][0].tolist() == [5, 6, 7, sep, 8, 9] + [eot] * 10
    assert batch["targets"][0].tolist() == [-100, -100, -100, 8, 9, eot] + [-100] * 10
    # a long source is cut to block_size // 2 tokens, so half the positions are still targets
    assert batch["idx"][1].tolist() == [5] * 8 + [sep] + [9] * 7
    assert batch["targets"][1].tolist() == [-100] * 8 + [9] * 8


def test_greedy_decoding_with_the_kv_cache_equals_the_argmax_of_full_forwards():
    torch.manual_seed(0)
    model = build_gpt(GPTConfig(vocab_size=40, block_size=32, n_layers=2, n_heads=2, d_model=16)).eval()
    inject(model, gpt_targets("q", "v"), r=2, alpha=4)
    for layer in lora_modules(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.3)
    prompts, sep, eot, limit = torch.randint(3, 40, (3, 5)), 1, 0, 6
    hyps = greedy(PromptDecoder(model, limit), prompts, sep, eot)
    for prompt, hyp in zip(prompts, hyps):
        seq = [*prompt.tolist(), sep]
        for _ in range(limit):
            nxt = int(model.logits(torch.tensor([seq]))[0, -1].argmax())
            if nxt == eot:
                break
            seq.append(nxt)
        assert hyp == seq[len(prompt) + 1 :]


def test_the_As_a_run_saved_are_the_As_of_its_model():
    """The report's heat map reads the A's from a run's saved tensors; the subspace run from its models."""
    small, large = (
        build_gpt(GPTConfig(vocab_size=64, block_size=16, n_layers=2, n_heads=2, d_model=16)) for _ in "ab"
    )
    inject(small, gpt_targets("q", "v"), 2, 8)
    inject(large, gpt_targets("q", "v"), 4, 8)
    saved = [saved_As(lora_state_dict(m), r) for m, r in ((small, 2), (large, 4))]
    live = [slice_As(m) for m in (small, large)]
    assert [len(s) for s in saved] == [4, 4]  # 2 layers x (W_q, W_v)
    for s, m in zip(saved, live):
        assert all(torch.equal(a, b) for a, b in zip((s[k] for k in sorted(s)), (m[k] for k in sorted(m))))
    assert torch.equal(mean_phi(*saved), mean_phi(*live)) and mean_phi(*saved).shape == (2, 4)


def test_subspace_similarity_is_eq_4():
    g = torch.Generator().manual_seed(0)
    A1, A2 = torch.randn(4, 16, generator=g), torch.randn(6, 16, generator=g)
    phi = subspace_similarity(A1, A2)
    V1, V2 = (torch.linalg.svd(A.double(), full_matrices=False).Vh for A in (A1, A2))
    for i in range(1, 5):
        for j in range(1, 7):
            expected = torch.linalg.matrix_norm(V1[:i] @ V2[:j].T) ** 2 / min(i, j)
            torch.testing.assert_close(phi[i - 1, j - 1], expected)
    mixed = torch.randn(4, 4, generator=g, dtype=torch.float64) @ A1.double()  # the same row space as A1
    assert torch.allclose(subspace_similarity(A1, mixed)[3, 3], torch.tensor(1.0, dtype=torch.float64))
    orthogonal = torch.zeros(2, 16)
    orthogonal[:, 8:] = torch.randn(2, 8, generator=g)
    lower = torch.zeros(3, 16)
    lower[:, :8] = torch.randn(3, 8, generator=g)
    assert subspace_similarity(lower, orthogonal).abs().max() < 1e-12


def test_training_memory_holds_weights_gradients_adam_state_and_activations():
    torch.manual_seed(0)
    ft = build_gpt(GPTConfig(vocab_size=64, block_size=16, n_layers=2, n_heads=2, d_model=32))
    lora = build_gpt(GPTConfig(vocab_size=64, block_size=16, n_layers=2, n_heads=2, d_model=32))
    inject(lora, gpt_targets("q", "v"), r=2, alpha=4)
    idx = torch.randint(0, 64, (4, 16))
    batch, cfg = {"idx": idx, "targets": idx}, TrainConfig()
    (ft_peak, ft_state), (lora_peak, lora_state) = (
        training_memory(m, batch, cfg, torch.device("cpu")) for m in (ft, lora)
    )
    weights = sum(p.nbytes for p in ft.parameters())
    adam = lambda m: sum(2 * p.nbytes + 4 for p in m.parameters() if p.requires_grad)  # noqa: E731  m, v, step
    assert ft_state == adam(ft) and lora_state == adam(lora)
    assert ft_peak >= weights + weights + ft_state  # weights, their gradients, the optimizer state
    assert lora_peak < ft_peak - weights  # no gradient, no state for W0


def test_target_variants_name_the_lr_search_and_ranks():
    cfg, _ = plan_of("cpu")
    names = list(target_variants(cfg.captions))
    assert names[:3] == ["base", "full_ft", f"full_ft_lr{cfg.captions.lr_search.full_ft[0]:g}"]
    assert {"lora", "rank_r1", "rank_r2", "rank_r8", "rank_r64", "q_only"} <= set(names)
