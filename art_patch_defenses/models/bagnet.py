"""Small-receptive-field networks that output local logits ``(N, X, Y, C)``, BagNet style.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works surprisingly well on ImageNet",
ICLR 2019 (https://arxiv.org/abs/1904.00760): unpadded convolutions keep each output's receptive field small,
and the classifier runs at every location (1x1 convolutions), so one patch corrupts only a window of local
logits. Each network reports its receptive field and stride, computed from its layers by
:func:`art_patch_defenses.geometry.receptive_field`. Also the column-band network of de-randomized smoothing and
Mask-DS built on it (:func:`mask_ds`), which robust masking and ART's de-randomized-smoothing baseline share, and
:class:`ColumnBandCNN`, column bands computed in one convolution pass (robust masking's MNIST Mask-DS), and
:class:`CroppedColumnBandNet`, column bands whose classifier runs on the band alone (its columns and its position)
instead of a mostly-zero ablated image.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from art_patch_defenses.geometry import receptive_field

#: (out_channels, kernel, stride) per layer: receptive field 9, stride 2, a 12x12 map on 32x32 inputs.
DEFAULT_LAYERS: tuple[tuple[int, int, int], ...] = ((64, 3, 1), (128, 3, 2), (128, 3, 1), (256, 1, 1), (256, 1, 1))


class LocalLogitsCNN(nn.Module):
    """Unpadded conv-BN-ReLU layers, then a 1x1 classifier at every location.

    ``forward`` returns local logits ``(N, X, Y, C)``; ``forward(x).sum((1, 2))`` are the plain global logits.
    """

    wrap = (False, False)

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 layers: Sequence[tuple[int, int, int]] = DEFAULT_LAYERS) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for out_channels, kernel, stride in layers:
            modules += [nn.Conv2d(channels, out_channels, kernel, stride=stride, padding=0, bias=False),
                        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            channels = out_channels
        self.features = nn.Sequential(*modules)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        field, stride, _ = receptive_field([(k, s, 0) for _, k, s in layers])
        self.receptive_field = (field, field)
        self.stride = (stride, stride)
        self._layers = tuple(layers)

    def feature_map_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The local-logit map ``(X, Y)`` for an input of ``input_hw`` pixels."""
        size = list(input_hw)
        for _, kernel, stride in self._layers:
            size = [(s - kernel) // stride + 1 for s in size]
        if min(size) < 1:
            raise ValueError(f"input {input_hw} is smaller than the receptive field {self.receptive_field}")
        return size[0], size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).permute(0, 2, 3, 1)


class ColumnBandNet(nn.Module):
    """De-randomized smoothing column bands (Levine & Feizi, NeurIPS 2020, https://arxiv.org/abs/2002.10733)
    as a local-logit network: band ``j`` keeps columns ``j .. j + band_width - 1`` (wrapping around) and
    ablates the rest; ``base`` classifies each ablated image. Local logits ``(N, 1, W, C)``, one per band.

    Pixels are encoded as ``(x, 1 - x)`` and ablated ones as ``(0, 0)``, so ``base`` takes ``2 * channels``
    inputs and can tell an ablated pixel from a black one. Along the width the receptive field is
    ``band_width`` with stride 1 and wrap-around; along the height every band sees the whole image.
    """

    def __init__(self, base: nn.Module, band_width: int = 4, image_hw: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        if not 1 <= band_width <= image_hw[1]:
            raise ValueError(f"band_width must be in [1, {image_hw[1]}], got {band_width}")
        self.base = base
        self.band_width = band_width
        self.receptive_field = (image_hw[0], band_width)
        self.stride = (image_hw[0], 1)
        self.wrap = (False, True)
        columns = torch.arange(image_hw[1])
        keep = torch.stack([((columns - j) % image_hw[1]) < band_width for j in range(image_hw[1])])
        self.register_buffer("keep", keep.float(), persistent=False)  # (bands, W)

    def feature_map_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return 1, input_hw[1]

    def ablate(self, x: torch.Tensor, bands: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded, ablated copies: ``(N * B, 2C, H, W)`` for bands ``bands`` (default: all, in order)."""
        keep = self.keep if bands is None else self.keep[bands]
        encoded = torch.cat([x, 1 - x], dim=1)  # (N, 2C, H, W)
        copies = encoded[:, None] * keep[None, :, None, None, :]  # (N, B, 2C, H, W)
        return copies.flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.base(self.ablate(x))  # (N * W, C)
        return logits.view(len(x), 1, self.keep.shape[0], -1)


class ColumnBandCNN(nn.Module):
    """Column bands in one pass: the local logit of band ``j`` sees columns ``j .. j + band_width - 1`` (wrapping
    around) and nothing else, as a :class:`ColumnBandNet` band does, but all bands share one convolution pass.

    Input: raw [0, 1] pixels ``(N, C, H, W)``, encoded as ``(x, 1 - x)`` plus a channel holding each column's
    position (a band knows where it is, as an ablated :class:`ColumnBandNet` image shows it; on centred digits
    that is worth much). The first convolution spans ``band_width`` columns without padding along the width;
    every later layer is ``k x 1`` (height only), then a maximum over the height and a 1x1 classifier. Local
    logits ``(N, 1, W, C)``: the receptive field is the full height by ``band_width`` columns, stride 1, with
    wrap-around, exactly the geometry robust masking's windows assume.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, band_width: int = 2, width: int = 32,
                 image_hw: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        if not 1 <= band_width <= image_hw[1]:
            raise ValueError(f"band_width must be in [1, {image_hw[1]}], got {band_width}")
        self.band_width = band_width
        self.receptive_field = (image_hw[0], band_width)
        self.stride = (image_hw[0], 1)
        self.wrap = (False, True)

        def block(inputs: int, outputs: int, kernel: tuple[int, int], pool: bool) -> list[nn.Module]:
            layers = [nn.Conv2d(inputs, outputs, kernel, padding=(kernel[0] // 2, 0), bias=False),
                      nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]
            return [*layers, nn.MaxPool2d((2, 1))] if pool else layers

        self.features = nn.Sequential(
            *block(2 * in_channels + 1, width, (3, band_width), True),
            *block(width, 2 * width, (3, 1), True),
            *block(2 * width, 2 * width, (3, 1), True),
            *block(2 * width, 4 * width, (3, 1), False),
        )
        self.classifier = nn.Conv2d(4 * width, num_classes, 1)

    def feature_map_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return 1, input_hw[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        position = torch.linspace(0.0, 1.0, x.shape[3], dtype=x.dtype, device=x.device).expand(len(x), 1, *x.shape[2:])
        encoded = torch.cat([x, 1 - x, position], dim=1)
        # The first band_width - 1 columns again at the right edge: the last bands wrap around.
        encoded = torch.cat([encoded, encoded[..., : self.band_width - 1]], dim=3)
        features = self.features(encoded).amax(dim=2, keepdim=True)  # (N, 4w, 1, W)
        return self.classifier(features).permute(0, 2, 3, 1)


def ds_base_from(resnet: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """A copy of ``resnet`` (a CIFAR ResNet trained on ``(x - mean) / std``) whose stem takes the ``(x, 1 - x)``
    encoding of :class:`ColumnBandNet`: the ``x`` half keeps the ResNet's weights, rescaled so that it needs no
    normalisation, and the ``1 - x`` half starts at zero."""
    base = copy.deepcopy(resnet)
    old = base.conv1
    channels = old.in_channels
    new = nn.Conv2d(2 * channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=True)
    std_t = torch.tensor(tuple(std), dtype=old.weight.dtype).view(1, channels, 1, 1)
    mean_t = torch.tensor(tuple(mean), dtype=old.weight.dtype).view(1, channels, 1, 1)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :channels] = old.weight / std_t  # conv((x - mean) / std) = conv'(x) + bias
        new.bias.copy_(-(old.weight * mean_t / std_t).sum(dim=(1, 2, 3)))
    base.conv1 = new
    return base


def mask_ds(resnet: nn.Module, mean: Sequence[float], std: Sequence[float], band_width: int = 4,
            image_hw: tuple[int, int] = (32, 32)) -> ColumnBandNet:
    """Mask-DS (PatchGuard's de-randomized-smoothing backbone): :class:`ColumnBandNet` bands of ``band_width``
    columns around :func:`ds_base_from` ``(resnet, mean, std)``. Takes raw [0, 1] pixels."""
    return ColumnBandNet(ds_base_from(resnet, mean, std), band_width, image_hw)


def band_columns(starts: torch.Tensor, band_width: int, width: int) -> torch.Tensor:
    """Column indices ``(B, band_width)`` of bands starting at ``starts`` (wrapping around the width)."""
    return (starts[:, None] + torch.arange(band_width, device=starts.device)) % width


class BandCrop(nn.Module):
    """A de-randomized-smoothing base classifier that looks at the kept band only: it takes ART's column-ablated
    encoding ``(M, 2C, H, W)`` (a kept pixel ``(x, 1 - x)``, an ablated one ``(0, 0)``, as
    :meth:`ColumnBandNet.ablate` and ART's ``ColumnAblator`` make it), finds where the band starts, crops its
    ``band_width`` columns and runs ``net`` on them plus a channel holding the band's position ``start / W``.

    Nothing outside the band reaches ``net``, so its output for a band cannot depend on the other columns, and a
    band costs ``band_width / W`` of a full-image pass of the same network (8x less for 4 of 32 columns).
    """

    def __init__(self, net: nn.Module, band_width: int, width: int) -> None:
        super().__init__()
        self.net, self.band_width, self.width = net, band_width, width

    def band_starts(self, ablated: torch.Tensor) -> torch.Tensor:
        """The first kept column of each ablated image (a kept column has ``x + (1 - x) = 1`` in every pixel)."""
        kept = ablated.detach().abs().sum(dim=(1, 2)) > 0  # (M, W)
        if self.band_width >= self.width:
            return torch.zeros(len(ablated), dtype=torch.long, device=ablated.device)
        first = kept & ~kept.roll(1, dims=1)  # kept, and the column before it is not
        if not torch.all(first.sum(dim=1) == 1):
            raise ValueError("every input must keep exactly one band of contiguous columns (a column ablation)")
        return first.float().argmax(dim=1)

    def crop(self, encoded: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """``net``'s input: the band's columns of ``encoded`` ``(M, 2C, H, W)`` and the position channel."""
        columns = band_columns(starts, self.band_width, self.width)  # (M, w)
        index = columns[:, None, None, :].expand(-1, encoded.shape[1], encoded.shape[2], -1)
        band = encoded.gather(3, index)
        position = (starts.to(encoded.dtype) / self.width).view(-1, 1, 1, 1).expand(-1, 1, *band.shape[2:])
        return torch.cat([band, position], dim=1)

    def forward(self, ablated: torch.Tensor) -> torch.Tensor:
        return self.net(self.crop(ablated, self.band_starts(ablated)))


class CroppedColumnBandNet(ColumnBandNet):
    """:class:`ColumnBandNet` whose band classifier is a :class:`BandCrop`: the same bands, votes and geometry
    (robust masking and ART's ``PyTorchDeRandomizedSmoothing`` take it as they take Mask-DS; ART's ablated images
    go through :class:`BandCrop`), but ``forward`` crops every band straight from the image, without building the
    ablated copies. ``net`` takes ``2C + 1`` channels of ``H x band_width`` pixels."""

    def __init__(self, net: nn.Module, band_width: int = 4, image_hw: tuple[int, int] = (32, 32)) -> None:
        super().__init__(BandCrop(net, band_width, image_hw[1]), band_width, image_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded = torch.cat([x, 1 - x], dim=1)  # (N, 2C, H, W)
        width = encoded.shape[3]
        starts = torch.arange(width, device=x.device).repeat(len(x))  # band j of image n at n * W + j
        copies = encoded.repeat_interleave(width, dim=0)
        logits = self.base.net(self.base.crop(copies, starts))
        return logits.view(len(x), 1, width, -1)


def cropped_mask_ds(resnet: nn.Module, mean: Sequence[float], std: Sequence[float], band_width: int = 4,
                    image_hw: tuple[int, int] = (32, 32)) -> CroppedColumnBandNet:
    """Mask-DS on cropped bands: :class:`CroppedColumnBandNet` around a copy of ``resnet`` whose stem takes the
    ``(x, 1 - x)`` encoding (as :func:`ds_base_from`) and the position channel (starting at zero weight); the
    ResNet's global pooling takes the ``H x band_width`` band as it takes a whole image."""
    base = ds_base_from(resnet, mean, std)
    old = base.conv1
    new = nn.Conv2d(old.in_channels + 1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=True)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    base.conv1 = new
    return CroppedColumnBandNet(base, band_width, image_hw)
