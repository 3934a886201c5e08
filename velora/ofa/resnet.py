"""OFA's image stem: the first three stages of a ResNet (Bottleneck blocks; stride 16, 1024 channels), with
module names as in the released checkpoints (`encoder.embed_images.*`). Block counts per `resnet_type` are in
`velora.ofa.config.RESNET_LAYERS`."""

from __future__ import annotations

import torch
import torch.nn as nn

RESNET_STRIDE = 16  # pixels per side of one image token: an S x S image gives (S/16)^2 tokens
RESNET_CHANNELS = 1024  # channels of the stage-3 feature map (256 planes x Bottleneck expansion 4)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability `p` while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def drop_path_rates(max_rate: float, n: int) -> list[float]:
    """Linearly increasing rates 0..max_rate (plain floats: no tensor, so meta-device init works)."""
    return [max_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(identity + self.drop_path(out))


class ResNet(nn.Module):
    """(B, 3, H, W) image -> (B, RESNET_CHANNELS, H/16, W/16) feature map."""

    def __init__(self, layers: tuple[int, int, int], drop_path_rate: float = 0.0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1, drop_path_rate=drop_path_rate)
        self.layer2 = self._make_layer(128, layers[1], stride=2, drop_path_rate=drop_path_rate)
        self.layer3 = self._make_layer(256, layers[2], stride=2, drop_path_rate=drop_path_rate)

    def _make_layer(self, planes: int, blocks: int, stride: int, drop_path_rate: float) -> nn.Sequential:
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        rates = drop_path_rates(drop_path_rate, blocks)
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]  # the first block never drops (as OFA)
        self.inplanes = out_planes
        layers += [Bottleneck(self.inplanes, planes, drop_path=rates[i]) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)

    @torch.no_grad()
    def fuse_for_inference_(self) -> "ResNet":
        """Inference only: fold every (eval-mode) BatchNorm into the convolution before it, and store weights
        channels-last, the layout oneDNN convolutions run fastest in. Same outputs up to float rounding."""
        pairs = [(self, "conv1", "bn1")]
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        for module, conv, bn in pairs:
            fold_batch_norm_(getattr(module, conv), getattr(module, bn))
            setattr(module, bn, nn.Identity())
        return self.to(memory_format=torch.channels_last)  # the rest (the folded weights already are)


@torch.no_grad()
def fold_batch_norm_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """`conv` becomes `conv` then eval-mode `bn`: its weight scaled per output channel, written channels-last in one
    pass over the old one (which may be the checkpoint file's memory-mapped tensor: no copy of it first, as
    torch.nn.utils.fusion makes), and a bias."""
    scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
    weight = torch.empty_like(conv.weight, memory_format=torch.channels_last)
    torch.mul(conv.weight, scale.view(-1, 1, 1, 1).to(weight.dtype), out=weight)
    bias = (conv.bias.float() if conv.bias is not None else 0) - bn.running_mean.float()
    trainable = conv.weight.requires_grad
    conv.weight = nn.Parameter(weight, requires_grad=trainable)
    conv.bias = nn.Parameter((bias * scale + bn.bias.float()).to(weight.dtype), requires_grad=trainable)
