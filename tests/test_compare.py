"""``nox -s compare`` (common.compare): the declaration's checks, fair budgets, the sizing, the lr choice, a smoke run."""

import math
import statistics

import pytest
import torch

from common import compare
from common.errors import PaperzooError
from common.experiment import COMPARE, load_paper, validate
from common.models import zoo
from common.testing import assert_one_line_error, reproduce_main, run_cli, seed_store, smoke_reproduction
from common.tracking import Tracker, client


def planned(*overrides):
    paper = load_paper(COMPARE)
    cfg = paper.config(list(overrides))
    runs = paper.plan(cfg)
    validate(paper, cfg, runs)
    return cfg, runs


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu"])
def test_every_architecture_gets_the_same_budget_and_a_search_of_its_own(preset):
    cfg, runs = planned(f"scale={preset}")
    for name, task in cfg.tasks.items():
        of_task = [r for r in runs if r.task == name]
        compared = [r for r in of_task if r.tags["lr_search"] == "false"]
        archs = set(task.architectures or cfg.architectures)
        assert {r.tags["architecture"] for r in compared} == archs
        assert len({r.tags["tokens"] for r in compared}) == 1, "every architecture sees the same tokens"
        assert len({(r.train.max_steps, r.train.batch_size) for r in compared}) == 1
        search = [r for r in of_task if r.tags["lr_search"] == "true"]
        if compare.searches(
            task
        ):  # each architecture its own grid, at the task's smallest size, its own seed
            smallest = compare.sizes_of(cfg, task)[0]
            for arch in archs:
                mine = [r for r in search if r.tags["architecture"] == arch]
                assert sorted(r.train.lr for r in mine) == sorted(cfg.lr_grid)
                assert {r.tags["size"] for r in mine} == {smallest}
                assert all(r.trained_seeds(cfg.seeds) == [cfg.lr_search_seed] for r in mine)
            assert cfg.lr_search_seed not in cfg.seeds  # no reported run is the one its lr was picked on
        else:
            assert not search
    if preset == "cpu":
        assert len(cfg.sizes) >= 3


def test_sizes_take_the_width_nearest_their_target():
    cfg, _ = planned("scale=cpu")
    for arch in cfg.architectures:
        for size, spec in cfg.sizes.items():
            config, n = compare.model_config(cfg, arch, size)
            model = zoo.build(arch, config, vocab_size=65, **({"block_size": 16} if arch == "gpt" else {}))
            embedding = sum(
                p.numel()
                for m in model.modules()
                if isinstance(m, torch.nn.Embedding)
                for p in m.parameters()
            )
            head = 0 if model.head.weight is model.embed.weight else model.head.weight.numel()  # untied: RWKV
            total = sum(p.numel() for p in model.parameters())
            assert n == compare.non_embedding_parameters(model) == total - embedding - head
            assert 0.6 < n / spec.params < 1.6, (arch, size, n)
            step = max(cfg.d_model_multiple, cfg.architectures[arch].get("head_dim", 1))
            for neighbour in (config["d_model"] - step, config["d_model"] + step):
                if neighbour > 0:
                    wider = compare._with_width(arch, dict(cfg.architectures[arch]), neighbour, spec.n_layers)
                    other = compare.non_embedding_parameters(zoo.build(arch, wider, vocab_size=2, **(
                        {"block_size": 8} if arch == "gpt" else {})))  # fmt: skip
                    assert abs(math.log(n / spec.params)) <= abs(math.log(other / spec.params)), (arch, size)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("architectures.gpt5={}", "unknown architecture 'gpt5'"),
        ("tasks.shakespeare.kind=poetry", "unknown task kind 'poetry'"),
        ("tasks.mqar.options.keys=3", "unexpected keyword argument 'keys'"),
        ("tasks.mqar.sizes=[XXL]", "unknown size 'XXL'"),
        ("tasks.cpython.lr_from=inference", "lr_from 'inference'"),
        ("lr_grid=[]", "lr_grid must list positive learning rates"),
        ("only=[nope]", "only=['nope'] matches no run"),
    ],
)
def test_a_bad_declaration_is_a_one_line_error(capsys, override, needle):
    assert_one_line_error(reproduce_main(capsys, COMPARE, "scale=smoke", override), needle)


def test_the_command_line_reports_an_unknown_architecture_in_one_line():
    result = run_cli("-m", "common.reproduce", "compare", "scale=smoke", "tasks.mqar.architectures=[lstm]")
    assert_one_line_error(result, "unknown architecture 'lstm'")


def _search_run(tracker, reproduction, task, arch, lr, seed, loss):
    tags = {"reproduction": reproduction, "lr_search": "true", "task": task, "architecture": arch, "lr": f"{lr:g}",
            "seed": str(seed)}  # fmt: skip
    tracker.start(f"{task}/{arch}_S_lr{lr:g}/s{seed}", tags, {})
    if loss is not None:  # None: diverged, no final val/loss
        tracker.log_metrics({"val/loss": loss}, 1)
    tracker.end("FINISHED")


def test_the_lr_with_the_lowest_mean_val_loss_is_chosen_and_a_diverged_one_never(tmp_path):
    uri = f"sqlite:///{seed_store(tmp_path)}"
    tracker = Tracker(COMPARE, uri)
    losses = {  # lr -> val/loss per search seed; 0.01 is best on one seed, 0.003 on the mean
        0.001: [2.0, 2.0], 0.003: [1.5, 1.6], 0.01: [1.2, 2.4], 0.1: [None, None]}  # fmt: skip
    for lr, per_seed in losses.items():
        for seed, loss in enumerate(per_seed):
            _search_run(tracker, "r1", "lm", "mamba", lr, seed, loss)
    _search_run(tracker, "r1", "lm", "gpt", 0.1, 0, None)  # every lr of gpt diverged
    _search_run(tracker, "r0", "lm", "mamba", 0.1, 0, 0.5)  # another reproduction: not this one's choice
    chosen = compare.choose_lrs(client(uri), "r1")
    assert chosen == {"lm/mamba": 0.003}
    assert statistics.fmean(losses[0.003]) < statistics.fmean(losses[0.01])


def test_a_smoke_comparison_trains_every_architecture_at_its_chosen_lr(lab):
    readme, metrics = smoke_reproduction(lab, COMPARE)
    mlflow_client = client()
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(COMPARE).experiment_id])
    by_key = {(r.data.tags["task"], r.data.tags["variant"]): r for r in runs}
    best = compare.choose_lrs(mlflow_client, runs[0].data.tags["reproduction"])
    cfg, _ = planned("scale=smoke")
    for (task, _), run in by_key.items():
        tags = run.data.tags
        assert {"architecture", "size", "n_params", "tokens", "lr", "task"} <= set(tags)
        if tags["lr_search"] == "false" and tags["kind"] != "inference":
            key = compare.chosen_key(cfg, task, tags["architecture"])
            assert float(tags["lr"]) == pytest.approx(best[key]) == float(run.data.params["train.lr"])
    assert set(cfg.architectures) == {r.data.tags["architecture"] for r in runs}
    for section in ("## Sizes", "## Learning-rate search", "## Task: shakespeare", "## Task: inference"):
        assert section in readme
    figures = lab / "reports" / COMPARE / "figures"
    for name in ("loss_vs_params_shakespeare", "loss_vs_tokens_shakespeare", "loss_vs_time_shakespeare",
                 "loss_by_position_cpython", "recall_mqar", "inference_ms", "inference_state"):  # fmt: skip
        assert (figures / f"{name}.png").stat().st_size > 1000, name
    assert all(
        metrics[("inference", f"{arch}_M")]["infer/state_ratio"] == 1 for arch in ("mamba", "rwkv4", "ttt")
    )
    assert metrics[("inference", "gpt_M")]["infer/state_ratio"] > 1  # the KV cache grows with the position
    index = (lab / "reports" / "README.md").read_text().splitlines()
    assert "[compare](compare/README.md)" in index[6], "the comparison heads the index"


def test_mqar_by_pairs_trains_every_count_and_reports_each():
    from common.data.synthetic import MQARByPairs

    task = MQARByPairs(length=32, pairs=(2, 4, 8), vocab=32, test_size=8)
    counts = [int((task.batch("train", i, 4, 0)["targets"] != -100).sum(1)[0]) for i in range(3)]
    assert counts == [2, 4, 8]  # batch i holds pairs[i % 3] pairs, all queried

    class Chance(torch.nn.Module):
        def logits(self, idx):
            return torch.zeros(*idx.shape, 32)

    metrics = task.evaluate(Chance(), torch.device("cpu"))
    assert set(metrics) == {"test/acc_p2", "test/acc_p4", "test/acc_p8", "test/acc"}
    assert metrics["test/acc"] == pytest.approx(
        statistics.fmean(metrics[f"test/acc_p{n}"] for n in (2, 4, 8))
    )
    with pytest.raises(ValueError, match="at least one"):
        MQARByPairs(length=32, pairs=(), vocab=32)


def test_the_inference_task_trains_nothing():
    from common.compare_tasks import build_task

    task = build_task("inference", {"positions": [8, 16], "n_tokens": 2})
    with pytest.raises(PaperzooError, match="trains nothing"):
        task.batch("train", 0, 1, 0)
    with pytest.raises(PaperzooError, match="must rise"):
        build_task("inference", {"positions": [16, 8]})


def test_resume_continues_a_partial_comparison(lab):
    """Some runs first (a comparison cut short), then ``resume=true`` with more: the finished runs are skipped,
    the rest join the same reproduction, and the report reads all of them."""
    from common.testing import reproduce_in

    assert reproduce_in(lab, COMPARE, "scale=smoke", "progress=false", "only=[inference]") == 0
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(COMPARE).experiment_id
    first = {r.info.run_id for r in mlflow_client.search_runs([experiment])}
    more = ("progress=false", "resume=true", "only=[inference,mqar]")
    assert reproduce_in(lab, COMPARE, "scale=smoke", *more) == 0
    runs = mlflow_client.search_runs([experiment])
    assert first < {r.info.run_id for r in runs}, "the finished runs were kept, not trained again"
    assert len({r.data.tags["reproduction"] for r in runs}) == 1
    cfg, planned_runs = planned("scale=smoke", "only=[inference,mqar]")
    needed = [r for r in planned_runs if r.task in ("inference", "mqar")]
    assert len(runs) == sum(len(r.trained_seeds(cfg.seeds)) for r in needed)  # mqar's search included
    assert "incomplete" not in (lab / "reports" / COMPARE / "README.md").read_text()
