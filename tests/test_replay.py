"""Experience replay for D (bigtrain/objective/replay.py: SimGAN's history buffer, CycleGAN's image pool):
the buffer's rule on its own, its config, and the trainer with it on: exact resume, accumulation and two
ranks."""

import math

import pytest
import torch

from bigtrain.config import ConfigError, load_config
from bigtrain.objective import build_objective
from bigtrain.objective.replay import Replay
from conftest import REPO, assert_same_networks

RECIPE = REPO / "configs/biggan/digits32.yaml"


def _fakes(call: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch whose images carry their id (call * 100 + index) in every pixel, labels id % 10."""
    ids = call * 100 + torch.arange(n)
    return ids.float().view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(), ids % 10


def _ids(images: torch.Tensor) -> list[int]:
    return images[:, 0, 0, 0].long().tolist()


def _run(
    replay: Replay, calls: int, seed: int = 0, n: int = 4, start: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches `start` to `start + calls - 1` through the buffer, each with its own slot's
    generator (seed, call)."""
    out = []
    for call in range(start, start + calls):
        generator = torch.Generator().manual_seed(seed * 1000 + call)
        out.append(replay.d_fakes(*_fakes(call, n), generator))
    return out


def test_size_0_or_prob_0_is_the_identity_with_no_draws():
    """Off (the default, or prob 0): no part is built, the objective hands D G's fakes as they are (the
    same tensors) and draws nothing from the slot's generator."""
    G = torch.nn.Linear(1, 1)
    for overrides in ([], ["regularize.replay.size=8", "regularize.replay.prob=0"]):
        objective = build_objective(load_config(RECIPE, overrides), G, True, torch.device("cpu"))
        assert not any(isinstance(r, Replay) for r in objective.regularizers), overrides
        fakes, labels = _fakes(0)
        generator = torch.Generator().manual_seed(3)
        state = generator.get_state()
        out = objective.d_fakes(fakes, labels, generator)
        assert out[0] is fakes and out[1] is labels and torch.equal(generator.get_state(), state)
    on = build_objective(load_config(RECIPE, ["regularize.replay.size=8"]), G, True, torch.device("cpu"))
    assert [r.title for r in on.regularizers if isinstance(r, Replay)] == ["experience replay"]


def test_the_fill_phase_returns_its_inputs_then_swaps_at_the_probability():
    """size 10, micro-batches of 4, prob 1: calls 0 and 1 and the first 2 images of call 2 fill the buffer
    and come back as they are, without a draw; from then on every image is swapped for a buffered one
    (each slot at most once per micro-batch) and takes its slot."""
    replay = Replay(size=10, prob=1.0)
    out = _run(replay, 2)
    for call, (images, labels) in enumerate(out):
        fakes, fake_labels = _fakes(call)
        assert torch.equal(images, fakes) and torch.equal(labels, fake_labels), (
            f"call {call} changed its inputs"
        )
    assert replay.count == 8 and _ids(replay.images[:8]) == [0, 1, 2, 3, 100, 101, 102, 103]
    generator = torch.Generator().manual_seed(9)
    filled = {0, 1, 2, 3, 100, 101, 102, 103, 200, 201}  # once call 2's first 2 images are in
    images, labels = replay.d_fakes(*_fakes(2), generator)
    assert _ids(images[:2]) == [200, 201] and replay.count == 10, (
        "the last 2 slots take call 2's first images"
    )
    swapped = _ids(images[2:])
    assert set(swapped) <= filled and len(set(swapped)) == 2, f"not two distinct buffered images: {swapped}"
    assert torch.equal(labels[2:], torch.tensor(swapped) % 10), "a replayed image lost its label"
    assert sorted(_ids(replay.images[:10])) == sorted(filled - set(swapped) | {202, 203})
    for call, (images, _) in enumerate(_run(replay, 3, start=3), start=3):  # prob 1: every image is older
        ids = _ids(images)
        assert all(i // 100 < call for i in ids) and len(set(ids)) == 4, (call, ids)
    assert replay.metrics() == {"replay_fraction": (2 + 12) / 24} and replay.metrics() == {}


def test_the_mixing_probability_is_the_fraction_replayed():
    """prob 0.3 on 3,000 images past the fill: the fraction replayed is within 4 standard deviations
    (0.034) of 0.3, and each returned image is either the new one or came from the buffer."""
    replay = Replay(size=16, prob=0.3)
    _run(replay, 4)  # the fill
    replay.metrics()
    for call, (images, _) in enumerate(_run(replay, 750, seed=1, start=4), start=4):
        assert all(i // 100 <= call for i in _ids(images))
    fraction = replay.metrics()["replay_fraction"]
    assert abs(fraction - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 3000), fraction


def test_draws_are_seeded_by_the_slot():
    """The same slot seeds give the same images and buffer; other seeds give others."""
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        replay = Replay(size=6, prob=0.5)
        out = _run(replay, 8, seed=seed)
        runs[name] = (torch.cat([images for images, _ in out]), replay.images[:6].clone())
    assert torch.equal(runs["a"][0], runs["b"][0]) and torch.equal(runs["a"][1], runs["b"][1])
    assert not torch.equal(runs["a"][0], runs["c"][0]) and not torch.equal(runs["a"][1], runs["c"][1])


def test_stored_tensors_have_no_graph():
    """Fakes that carry a graph are stored detached: the buffer and the checkpoint state hold no
    gradient and no graph; images D sees as they are keep theirs."""
    replay = Replay(size=6, prob=0.5)
    leaf = torch.ones(4, 3, 2, 2, requires_grad=True)
    for call in range(5):
        fakes, labels = _fakes(call)
        out, _ = replay.d_fakes(fakes * leaf, labels, torch.Generator().manual_seed(call))
    assert out.requires_grad, "the fresh fakes lost their graph"
    assert not replay.images.requires_grad and replay.images.grad_fn is None
    state = replay.state_dict()
    assert all(not t.requires_grad and t.grad_fn is None for t in state.values())


def test_checkpoint_state_holds_every_rank_s_buffer_and_each_rank_loads_its_own():
    """`gather` (Collectives.gather_rows on ranks) concatenates the ranks' rows; state_dict shapes them
    (world, count, ...) and a rank loads row `rank`. Here 2 ranks' gather is faked by repeating rank 0's
    buffer with 1000 added."""
    replay = Replay(size=6, prob=0.5, gather=lambda rows: torch.cat([rows, rows + 1000]))
    assert replay.state_dict() == {}, "an empty buffer writes nothing"
    _run(replay, 3)
    state = replay.state_dict()
    assert state["replay_images"].shape == (2, 6, 3, 2, 2) and state["replay_labels"].shape == (2, 6)
    second = Replay(size=6, prob=0.5, rank=1)
    second.load_state_dict(state)
    assert second.count == 6 and torch.equal(second.images, replay.images[:6] + 1000)
    assert torch.equal(second.labels, replay.labels[:6] + 1000)
    fresh = Replay(size=6, prob=0.5)
    fresh.load_state_dict({})  # replay turned on at resume: starts empty
    assert fresh.count == 0


def test_a_new_image_shape_empties_the_buffer():
    """A ProGAN phase's new resolution: the buffer starts its fill again at the new shape."""
    replay = Replay(size=6, prob=1.0)
    _run(replay, 3)
    bigger = torch.zeros(4, 3, 4, 4)
    out, _ = replay.d_fakes(bigger, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    assert out is bigger and replay.count == 4 and replay.images.shape[1:] == (3, 4, 4)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"regularize.replay.prob=1.5 must be at most 1"):
        load_config(RECIPE, ["regularize.replay.size=8", "regularize.replay.prob=1.5"])
    with pytest.raises(ConfigError, match="regularize.replay.size=-1 must be >= 0"):
        load_config(RECIPE, ["regularize.replay.size=-1"])
    with pytest.raises(ConfigError, match="regularize.replay.size=8 replaces fakes that regularize.zcr.dis"):
        load_config(RECIPE, ["regularize.replay.size=8", "regularize.zcr.dis=5"])


def _cfg(data, run_dir, iterations, *extra):
    return load_config(RECIPE, [
        f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false", "eval.every_kimg=0",
        "train.batch=16", "data.num_workers=0", f"train.total_kimg={iterations * 16 / 1000}", "train.accum=2",
        "regularize.replay.size=12", "model.biggan.ch=16", "model.biggan.d_ch=16", *extra,
    ])  # fmt: skip


def _replay(trainer) -> Replay:
    (replay,) = [r for r in trainer.objective.regularizers if isinstance(r, Replay)]
    return replay


def test_resume_is_bit_identical_with_replay_on_and_accumulation(demo_shards, tmp_path):
    """BigGAN digits (widths 16), batch 16 in 2 micro-batches of 8, a buffer of 12: the first D step fills
    it (8 + 4) and replays in its second micro-batch. 2 iterations straight against 1, a checkpoint (the
    full buffer), and 1 resumed that replays from it: the networks and the buffer are bit-identical, and
    D saw replayed fakes (finite losses)."""
    from bigtrain.train.loop import Trainer

    whole = Trainer(_cfg(demo_shards, tmp_path / "whole", 2))
    whole.run()
    metrics = whole.log_metrics(elapsed=1.0, images=32)
    assert math.isfinite(metrics["loss_d"]) and math.isfinite(metrics["loss_g"]), metrics
    assert 0 < metrics["replay_fraction"] <= 20 / 32, metrics["replay_fraction"]  # 20 of 32 past the fill
    Trainer(_cfg(demo_shards, tmp_path / "split", 1)).run()
    resumed = Trainer(_cfg(demo_shards, tmp_path / "split", 2), resume=True)
    assert resumed.iteration == 1 and _replay(resumed).count == 12, "the buffer did not come back"
    resumed.run()
    assert_same_networks(whole, resumed, "with replay on")
    a, b = _replay(whole), _replay(resumed)
    assert a.count == b.count == 12
    assert torch.equal(a.images[:12], b.images[:12]) and torch.equal(a.labels[:12], b.labels[:12])
