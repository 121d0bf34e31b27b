"""PatchCleanser: the mask set covers every patch placement, double masking on crafted prediction maps, the fast
(one-mask first) and full-map predictions agree, certified samples keep their label under patches everywhere,
and worst-of-c mask training trains on the worst draw."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_shared

from art_patch_defenses.geometry import mask_positions, mask_set, patch_masks
from art_patch_defenses.patchcleanser import (
    PyTorchPatchCleanser,
    certified_from_map,
    double_masking,
    double_masking_from_map,
)


@pytest.mark.parametrize("n, p, k", [(8, 1, 2), (8, 3, 3), (11, 2, 4), (16, 5, 3), (16, 16, 2), (32, 5, 6),
                                     (32, 2, 6), (13, 4, 13)])
def test_mask_set_covers_every_patch_placement(n, p, k):
    starts, side = mask_positions(n, p, k)
    stride = -(-(n - p + 1) // k)
    assert side == min(p + stride - 1, n) and len(starts) <= k and starts[-1] == n - side
    masks = mask_set((n, n), p, k)
    for row in range(n - p + 1):
        for col in range(n - p + 1):
            patch = patch_masks((n, n), (p, p), np.array([[row, col]]))[0]
            assert np.any(np.all(masks[:, patch], axis=1)), (row, col)


def test_mask_geometry_refuses_bad_sizes():
    with pytest.raises(ValueError, match="patch"):
        mask_positions(8, 9, 2)
    with pytest.raises(ValueError, match="masks_per_axis"):
        mask_positions(8, 2, 0)


def _map(one_mask, two_mask=None):
    """A symmetric prediction map from one-mask labels and an optional dict {(i, j): label}."""
    one_mask = np.asarray(one_mask)
    grid = np.tile(one_mask[:, None], (1, len(one_mask)))  # default: a pair predicts like its first mask
    grid = np.where(np.arange(len(one_mask))[:, None] <= np.arange(len(one_mask))[None], grid, grid.T)
    for (i, j), label in (two_mask or {}).items():
        grid[i, j] = grid[j, i] = label
    return grid[None]


def test_double_masking_unanimous():
    assert double_masking_from_map(_map([3, 3, 3, 3]))[0] == 3


def test_double_masking_trusts_a_disagreer_whose_two_mask_row_agrees():
    # mask 2 says 7, the majority says 3; every pair with mask 2 says 7: the patch was under mask 2.
    prediction_map = _map([3, 3, 7, 3], {(0, 2): 7, (1, 2): 7, (2, 3): 7})
    assert double_masking_from_map(prediction_map)[0] == 7


def test_double_masking_falls_back_to_the_majority():
    # mask 2 disagrees but a pair with it says 3: not trusted.
    prediction_map = _map([3, 3, 7, 3], {(0, 2): 7, (1, 2): 3, (2, 3): 7})
    assert double_masking_from_map(prediction_map)[0] == 3


def test_double_masking_takes_disagreers_in_index_order():
    # masks 1 and 3 disagree; mask 1's row fails, mask 3's row holds.
    prediction_map = _map([3, 5, 3, 8, 3], {(0, 1): 3, (1, 3): 8, (0, 3): 8, (2, 3): 8, (3, 4): 8})
    assert double_masking_from_map(prediction_map)[0] == 8


def test_double_masking_majority_tie_goes_to_the_lowest_label():
    prediction_map = _map([4, 2, 4, 2], {(0, 1): 9, (0, 3): 9, (1, 2): 9, (2, 3): 9})
    assert double_masking_from_map(prediction_map)[0] == 2
    one_mask = np.array([[4, 2, 4, 2]])
    rows = {(0, 0): np.array([4, 9, 4, 9]), (0, 2): np.array([4, 9, 4, 9])}
    assert double_masking(one_mask, rows)[0] == 2


def test_certified_only_when_every_prediction_is_the_label():
    assert certified_from_map(_map([3, 3, 3]), np.array([3]))[0]
    assert not certified_from_map(_map([3, 3, 3], {(0, 2): 1}), np.array([3]))[0]
    assert not certified_from_map(_map([3, 3, 3]), np.array([1]))[0]


@pytest.fixture(scope="module")
def cleanser():
    from art_patch_defenses.models import build_model, make_classifier

    return make_classifier(build_model("mnist_cnn", "embedded"), "mnist_cnn", estimator_class=PyTorchPatchCleanser,
                           patch_size=5, masks_per_axis=4)


def test_prediction_map_is_symmetric_and_agrees_with_the_fast_path(cleanser, mnist_test):
    x = mnist_test.x[::25][:12]
    prediction_map = cleanser.prediction_map(x)
    masks = cleanser.masks()
    assert prediction_map.shape == (12, len(masks), len(masks))
    np.testing.assert_array_equal(prediction_map, prediction_map.transpose(0, 2, 1))
    fill = np.float32(0.1307)  # the MNIST normalisation mean: zero in the normalised input
    for n in (0, 5):
        for i, j in ((0, 0), (1, 7), (3, 15)):
            copy = np.where(masks[i] | masks[j], fill, x[n])[None]
            assert prediction_map[n, i, j] == cleanser.predict_base(copy).argmax(1)[0]
    np.testing.assert_array_equal(cleanser.robust_labels(x), double_masking_from_map(prediction_map))
    np.testing.assert_array_equal(cleanser.predict(x).argmax(1), double_masking_from_map(prediction_map))
    labels = mnist_test.y[::25][:12].copy()
    labels[::4] = (labels[::4] + 1) % 10  # some wrong labels: ruled out by their one-mask predictions
    reference = double_masking_from_map(prediction_map)
    for y, target in ((mnist_test.y[::25][:12], mnist_test.y[::25][:12]), (labels, labels), (None, reference)):
        result = cleanser.certify(x, y, batch_size=7)  # small batches: the two-mask pairs stop part-way
        np.testing.assert_array_equal(result.prediction, reference)
        np.testing.assert_array_equal(result.certified, certified_from_map(prediction_map, target))
    one_mask_right = np.all(np.diagonal(prediction_map, axis1=1, axis2=2) == mnist_test.y[::25][:12, None], axis=1)
    certified = certified_from_map(prediction_map, mnist_test.y[::25][:12])
    assert np.any(certified) and np.any(one_mask_right & ~certified)  # a full run and a stop part-way are exercised


def test_certified_samples_keep_their_label_under_patches_everywhere(cleanser, mnist_test):
    x, y = mnist_test.x[::10][:40], mnist_test.y[::10][:40]
    certified = np.flatnonzero(cleanser.certify(x, y).certified)
    assert len(certified) >= 1, "no certified sample: the soundness check would prove nothing"
    rng = np.random.default_rng(0)
    side = 32 - 5 + 1
    locations = np.array([[r, c] for r in range(side) for c in range(side)])
    for i in certified[:1]:
        for content in ("noise", "white"):
            patched = np.repeat(x[i : i + 1], len(locations), axis=0)
            for k, (r, c) in enumerate(locations):
                patched[k, :, r : r + 5, c : c + 5] = rng.random((1, 5, 5)) if content == "noise" else 1.0
            assert np.all(cleanser.robust_labels(patched) == y[i]), (i, content)


def test_settings_are_validated_and_restored(cleanser, mnist_test):
    with pytest.raises(ValueError, match="masks_per_axis"):
        cleanser.set_params(patch_size=3, masks_per_axis=0)
    assert cleanser.patch_size == 5 and cleanser.masks_per_axis == 4
    with pytest.raises(ValueError, match="fill_value"):
        cleanser.set_params(fill_value=2.0)
    assert cleanser.fill_value is None
    with pytest.raises(ValueError, match="empty"):
        cleanser.predict(mnist_test.x[:0])
    with pytest.raises(ValueError, match="NHWC"):
        cleanser.certify(mnist_test.x[:2].transpose(0, 2, 3, 1), mnist_test.y[:2])


@needs_shared
def test_channels_last_layout_gives_the_same_answer_and_leaves_no_hook():
    from art_patch_defenses.data import load_dataset
    from art_patch_defenses.patchcleanser import get_art_model

    cleanser = get_art_model({"name": "cifar_resnet20", "weights": "patchcleanser", "patch_size": 5,
                              "masks_per_axis": 3})
    test = load_dataset("cifar10", "test", n=10, seed=0)  # one image per class
    x, y = test.x, test.y
    layouts = []
    watch = cleanser.model.register_forward_pre_hook(
        lambda _module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    assert cleanser.channels_last
    fast_map, fast = cleanser.prediction_map(x), cleanser.certify(x, y)
    assert layouts and all(layouts)  # 3-channel NCHW input: the option changes the layout the model sees
    cleanser.set_params(channels_last=False)
    layouts.clear()
    plain_map, plain = cleanser.prediction_map(x), cleanser.certify(x, y)
    assert layouts and not any(layouts)
    watch.remove()
    np.testing.assert_array_equal(fast_map, plain_map)
    np.testing.assert_array_equal(fast.certified, plain.certified)
    np.testing.assert_array_equal(fast.prediction, plain.prediction)
    assert not cleanser._model._forward_pre_hooks and not cleanser.model._forward_pre_hooks
    with pytest.raises(ValueError, match="channels_last"):
        cleanser.set_params(channels_last="yes")
    assert cleanser.channels_last is False


def test_flip_average_base_classifier_from_the_factory(mnist_test):
    from art_patch_defenses.models.flip_average import FlipAverage
    from art_patch_defenses.patchcleanser import get_art_model

    config = {"name": "mnist_patchcleanser_cnn", "weights": "embedded", "patch_size": 5, "masks_per_axis": 3}
    plain, flipped = get_art_model(config), get_art_model({**config, "flip_average": True})
    assert isinstance(flipped.model, FlipAverage) and not isinstance(plain.model, FlipAverage)
    x, y = mnist_test.x[::100][:6], mnist_test.y[::100][:6]
    np.testing.assert_allclose(flipped.predict_base(x), flipped.predict_base(x[..., ::-1].copy()), atol=1e-6)
    assert not np.allclose(flipped.predict_base(x), plain.predict_base(x), atol=1e-3)
    # the certifier runs on the averaged base classifier: its map and certificates come from that model
    found = flipped.certify(x, y)
    grid = flipped.prediction_map(x)
    np.testing.assert_array_equal(found.prediction, double_masking_from_map(grid))
    np.testing.assert_array_equal(found.certified, certified_from_map(grid, y))
    with pytest.raises(ValueError, match="flip_average"):
        get_art_model({**config, "flip_average": "yes"})
    with pytest.raises(ValueError, match="known: .*flip_average"):
        get_art_model({**config, "flip_averge": True})


class ChannelsLast(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.inner(batch.permute(0, 3, 1, 2))


def test_nhwc_gives_the_nchw_answer(mnist_test):
    from art_patch_defenses.models import build_model

    model = build_model("mnist_cnn", "embedded")
    settings = {"loss": torch.nn.CrossEntropyLoss(), "nb_classes": 10, "clip_values": (0.0, 1.0),
                "preprocessing": (0.1307, 0.3081), "patch_size": 5, "masks_per_axis": 3, "device_type": "cpu"}
    nchw = PyTorchPatchCleanser(model, input_shape=(1, 32, 32), **settings)
    nhwc = PyTorchPatchCleanser(ChannelsLast(model), input_shape=(32, 32, 1), channels_first=False, **settings)
    x = mnist_test.x[::100][:6]
    np.testing.assert_array_equal(nhwc.prediction_map(x.transpose(0, 2, 3, 1)), nchw.prediction_map(x))
    np.testing.assert_array_equal(nhwc.predict(x.transpose(0, 2, 3, 1)), nchw.predict(x))


class _MeanLogit(torch.nn.Module):
    """Logits ``(s, -s)`` with ``s`` the image mean: for label 0, more masked (zeroed) pixels, higher loss."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(1, 2, 3))
        return torch.stack([s, -s], 1)


def test_worst_of_masks_loss_trains_on_the_highest_loss_draw():
    from art_patch_defenses.patchcleanser.training import _draw_masks, _mask_sets, worst_of_masks_loss

    batch, labels = torch.ones(16, 1, 32, 32), torch.zeros(16, dtype=torch.long)
    loss_fn = worst_of_masks_loss((32, 32), (5,), 6, candidates=5, seed=3)
    _, logits = loss_fn(_MeanLogit(), batch, labels)
    sets, generator = _mask_sets((32, 32), (5,), 6, 2), torch.Generator().manual_seed(3)
    draws = torch.stack([_draw_masks(sets, 16, 2, generator) for _ in range(5)])  # the same draws
    most_covered = draws.flatten(2).sum(2).max(0).values.float()
    np.testing.assert_allclose(logits[:, 0].numpy(), 1 - most_covered.numpy() / 1024, rtol=1e-6)
    assert torch.any(most_covered > draws[0].flatten(1).sum(1))  # the first draw alone would not pass


def test_worst_of_needs_every_image_masked():
    from art_patch_defenses.patchcleanser import train_patchcleanser

    x, y = np.zeros((4, 1, 32, 32), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="probability must be 1.0"):
        train_patchcleanser(_MeanLogit(), x, y, (0.5,), (0.5,), probability=0.75, worst_of=4)


class _Constant(torch.nn.Module):
    """CIFAR-10 logits that always pick class 3, whatever is masked."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.nn.functional.one_hot(torch.tensor(3), 10).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1)


def test_training_holdout_report_is_double_masking_on_the_held_out_images():
    """``patchcleanser.train --holdout`` logs clean and certified accuracy for the largest patch size: a classifier
    that always says 3 is right and certified exactly on the images of class 3."""
    from types import SimpleNamespace

    from art_patch_defenses.patchcleanser.train import report_holdout

    x = np.random.default_rng(0).random((6, 3, 32, 32)).astype(np.float32)
    y = np.array([3, 3, 0, 1, 3, 9])
    lines: list[str] = []
    report_holdout(_Constant(), "cifar_resnet20", SimpleNamespace(patch_sizes=[2, 5], masks_per_axis=6), x, y,
                   lines.append, "before")
    assert lines == ["holdout before: 6 training images, 5x5 patch, 6 masks per axis: clean 0.5000 certified 0.5000"]
    report_holdout(_Constant(), "cifar_resnet20", SimpleNamespace(patch_sizes=[5], masks_per_axis=6), x[:0], y[:0],
                   lines.append, "after")
    assert len(lines) == 1  # no holdout, no line


def test_benchmark_certifies_in_stored_chunks_with_the_answer_of_one_call(cleanser, mnist_test, tmp_path,
                                                                            monkeypatch):
    """``benchmarks/patchcleanser_cifar10.py --chunks-dir``: certifying chunk by chunk (5 images of each class) gives
    one ``certify`` call's predictions and certificates; a rerun reads every chunk back and certifies nothing."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import patchcleanser_cifar10 as benchmark

    from art_patch_defenses.evaluation.distributed import ChunkStore, DistContext, make_chunks

    x, y = mnist_test.x[:120], mnist_test.y[:120]
    chunks = len(make_chunks(y, benchmark.IMAGES_PER_CLASS))  # 7 to 18 images of a class here: 4 chunks
    whole = cleanser.certify(x, y)
    key = {"test": "chunks"}
    chunked, seconds = benchmark.certify_in_chunks(cleanser, x, y, ChunkStore(tmp_path, key, resume=True),
                                                   DistContext())
    np.testing.assert_array_equal(chunked.prediction, whole.prediction)
    np.testing.assert_array_equal(chunked.certified, whole.certified)
    assert whole.certified.any() and not whole.certified.all()
    assert chunks > 1 and len(list(tmp_path.glob("certify-5x5-*.npz"))) == chunks and seconds > 0

    def no_certify(*args, **kwargs):
        raise AssertionError("a stored chunk was certified again")

    monkeypatch.setattr(cleanser, "certify", no_certify)
    again, seconds_again = benchmark.certify_in_chunks(cleanser, x, y, ChunkStore(tmp_path, key, resume=True),
                                                       DistContext())
    np.testing.assert_array_equal(again.certified, whole.certified)
    assert seconds_again == seconds
