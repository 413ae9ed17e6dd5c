"""The denoising UNet: a conditional encoder-decoder that maps ``(x_t, t, cond)`` to a prediction map.

Like diffusers' ``UNet2DModel``, the network knows nothing about betas or schedulers: it takes a noisy sample
``x_t [B, in, H, W]``, a timestep per sample (any scale, e.g. ``0..999``) and a conditioning image
``cond [B, cond, H, W]`` and returns ``[B, out, H, W]``; what that output means (ε, v or x0) is the
scheduler's business.

Layout (``L = len(channel_mults)`` levels, ``c_l = base_channels * channel_mults[l]``; level ``l`` runs at
``1 / 2**l`` of the (padded) input size)::

    concat(x_t, cond) -> stem conv 3x3 -> c_0
    encoder, level l:  num_res_blocks x ResBlock(-> c_l)  -> skip_l  -> strided conv (except the last level)
    bottleneck:        ResBlock -> SelfAttention -> ResBlock            (at c_{L-1}, 1 / 2**(L-1) size)
    decoder, level l:  concat(h, FeatureEnhancement(skip_l)) -> num_res_blocks x ResBlock(-> c_l)
                       (the last block of a level l > 0 already outputs c_{l-1}) -> nearest x2 + conv 3x3
    head:              GroupNorm -> SiLU -> conv 3x3 -> out   (zero-initialised: the untrained net outputs 0)

The timestep enters every residual block as a FiLM scale/shift after its second normalisation.

Cost notes (CPU inference of full frames matters here): there is one skip per level (not per block), the
decoder changes channels *before* upsampling so the full-resolution convolutions stay at ``c_0`` channels,
and the bottleneck attention average-pools its keys/values to at most ``attention_max_tokens`` tokens, so
its cost grows linearly (not quadratically) with the frame size; at training-crop sizes whose bottleneck has
at most that many positions it is exact global attention.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from jaxtyping import Float, Real
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.diffusion.config import UNetConfig

__all__ = [
    "DepthUNet",
    "FeatureEnhancement",
    "ResBlock",
    "SelfAttention",
    "TimestepEmbedding",
    "UNetConfig",
    "count_parameters",
    "pad_to_multiple",
    "timestep_embedding",
]


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- helpers


def timestep_embedding(t: Real[Tensor, " b"], dim: int, max_period: float = 10_000.0) -> Float[Tensor, "b dim"]:
    """Sinusoidal embedding ``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period ** (-k / (dim / 2))``.

    Args:
        t: Timesteps ``[B]`` (int or float, any scale; ``0..999`` spans the frequencies well).
        dim: Embedding size (even).

    Returns:
        ``[B, dim]`` float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def pad_to_multiple(x: Float[Tensor, "b c h w"], multiple: int) -> Float[Tensor, "b c h_pad w_pad"]:
    """Pad the bottom and right of ``x [B, C, H, W]`` so ``H`` and ``W`` become multiples of ``multiple``.

    Each dimension is reflect-padded, or replicate-padded where it is too small to reflect (pad >= size).
    The original content stays at ``[..., :H, :W]``.
    """
    for dim in (-2, -1):
        size = x.shape[dim]
        pad = -size % multiple
        if pad:
            spec = (0, 0, 0, pad) if dim == -2 else (0, pad, 0, 0)
            x = F.pad(x, spec, mode="reflect" if pad < size else "replicate")
    return x


# ------------------------------------------------------------------------------------------ components


class TimestepEmbedding(nn.Module):
    """Sinusoidal timestep features followed by a 2-layer MLP: ``t [B] -> [B, emb_dim]``."""

    def __init__(self, freq_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: Real[Tensor, " b"]) -> Float[Tensor, "b emb"]:
        first = cast(nn.Linear, self.mlp[0])
        return self.mlp(timestep_embedding(t, self.freq_dim).to(first.weight.dtype))


class ResBlock(nn.Module):
    """Pre-activation residual block with FiLM timestep conditioning.

    ``h = conv3x3(SiLU(GN(x)))``; ``h = conv3x3(dropout(SiLU(GN(h) * (1 + scale) + shift)))``; returns
    ``h + skip(x)`` where ``skip`` is a 1x1 conv when the channel count changes and the identity otherwise.
    ``(scale, shift) = Linear(SiLU(emb))``.

    Shapes: ``x [B, in_ch, H, W]``, ``emb [B, emb_dim]`` -> ``[B, out_ch, H, W]``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float = 0.0, use_checkpoint: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Float[Tensor, "b c_in h w"], emb: Float[Tensor, "b emb"]) -> Float[Tensor, "b c_out h w"]:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over spatial positions, with GroupNorm and a residual connection.

    Queries come from every position; keys and values from the normalised features average-pooled (by the
    smallest integer factor) to at most ``max_tokens`` positions, so ``[B, C, H, W]`` costs
    ``O(H W max_tokens C)``. When ``H W <= max_tokens`` this is exact global attention.

    Shapes: ``x [B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, heads: int, groups: int, max_tokens: int) -> None:
        super().__init__()
        self.heads = heads
        self.max_tokens = max_tokens
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Conv2d(channels, channels, 1)
        self.to_kv = nn.Conv2d(channels, 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def kv_grid(self, h: int, w: int) -> tuple[int, int]:
        """Size of the key/value grid for an ``h x w`` input."""
        s = max(1, math.isqrt(max(h * w // self.max_tokens, 1)))
        while math.ceil(h / s) * math.ceil(w / s) > self.max_tokens:
            s += 1
        return math.ceil(h / s), math.ceil(w / s)

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h w"]:
        b, c, h, w = x.shape
        n = self.norm(x)
        grid = self.kv_grid(h, w)
        n_kv = n if grid == (h, w) else F.adaptive_avg_pool2d(n, grid)
        k, v = self.to_kv(n_kv).chunk(2, dim=1)
        # [B, C, h, w] -> [B, heads, positions, C / heads]
        q, k, v = (z.reshape(b, self.heads, c // self.heads, -1).transpose(-1, -2) for z in (self.to_q(n), k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with a shared MLP.

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h w"]:
        pooled = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], dim=0)  # [2B, C, 1, 1]
        avg, mx = self.mlp(pooled).chunk(2, dim=0)
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(conv7x7([mean_c(x), max_c(x)]))``.

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h w"]:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(stats))


class FeatureEnhancement(nn.Module):
    """CBAM-style feature enhancement of a skip connection: channel attention, then spatial attention.

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention()

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h w"]:
        return self.spatial(self.channel(x))


class Downsample(nn.Module):
    """Strided 3x3 conv: ``[B, C, H, W] -> [B, C, H/2, W/2]`` (H, W even)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h//2 w//2"]:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: ``[B, C, H, W] -> [B, C, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c 2*h 2*w"]:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderLevel(nn.Module):
    """Residual blocks at one resolution, then (except at the last level) a downsampling.

    ``forward`` returns ``(skip [B, out_ch, H, W], h [B, out_ch, H/2, W/2] or the skip itself)``.
    """

    def __init__(self, cfg: UNetConfig, level: int, in_ch: int, emb_dim: int) -> None:
        super().__init__()
        out_ch = cfg.channels(level)
        self.blocks = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_dim, cfg.groups, cfg.dropout, cfg.gradient_checkpointing)
            for i in range(cfg.num_res_blocks)
        )
        self.down = Downsample(out_ch) if level < len(cfg.channel_mults) - 1 else None

    def forward(
        self, h: Float[Tensor, "b c_in h w"], emb: Float[Tensor, "b emb"]
    ) -> tuple[Float[Tensor, "b c_out h w"], Float[Tensor, "b c_out h_next w_next"]]:
        for block in self.blocks:
            h = block(h, emb)
        return h, (self.down(h) if self.down is not None else h)


class DecoderLevel(nn.Module):
    """Merge the (enhanced) skip by concatenation, residual blocks, then (except at level 0) upsample.

    The last block of a level ``l > 0`` already outputs the channels of level ``l - 1``, so the upsampling
    conv runs at the smaller channel count. Shapes: ``h [B, c_l, H, W]``, ``skip [B, c_l, H, W]`` ->
    ``[B, c_{l-1}, 2H, 2W]`` (level 0: ``[B, c_0, H, W]``).
    """

    def __init__(self, cfg: UNetConfig, level: int, emb_dim: int) -> None:
        super().__init__()
        ch = cfg.channels(level)
        out_ch = cfg.channels(max(level - 1, 0))
        n = cfg.num_res_blocks
        self.enhance = FeatureEnhancement(ch) if cfg.enhance_skips else nn.Identity()
        self.blocks = nn.ModuleList(
            ResBlock(
                2 * ch if i == 0 else ch,
                out_ch if i == n - 1 else ch,
                emb_dim,
                cfg.groups,
                cfg.dropout,
                cfg.gradient_checkpointing,
            )
            for i in range(n)
        )
        self.up = Upsample(out_ch) if level > 0 else None

    def forward(
        self, h: Float[Tensor, "b c h w"], skip: Float[Tensor, "b c h w"], emb: Float[Tensor, "b emb"]
    ) -> Float[Tensor, "b c_out h_next w_next"]:
        h = torch.cat([h, self.enhance(skip)], dim=1)
        for block in self.blocks:
            h = block(h, emb)
        return self.up(h) if self.up is not None else h


# ------------------------------------------------------------------------------------------------ model


class DepthUNet(nn.Module):
    """Conditional denoising UNet for 1-channel depth maps (see the module docstring for the layout).

    Frames of any size are accepted: :meth:`forward` pads ``H`` and ``W`` up to a multiple of
    :attr:`multiple` and crops the output back to ``H x W``.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c0 = cfg.channels(0)
        emb_dim = 4 * cfg.base_channels
        self.time_embedding = TimestepEmbedding(cfg.base_channels, emb_dim)
        self.stem = nn.Conv2d(cfg.in_channels + cfg.cond_channels, c0, 3, padding=1)

        levels = range(len(cfg.channel_mults))
        self.encoder = nn.ModuleList(
            EncoderLevel(cfg, level, c0 if level == 0 else cfg.channels(level - 1), emb_dim) for level in levels
        )
        cb = cfg.channels(-1)
        res = {"emb_dim": emb_dim, "groups": cfg.groups, "dropout": cfg.dropout,
               "use_checkpoint": cfg.gradient_checkpointing}
        self.mid_block1 = ResBlock(cb, cb, **res)
        self.mid_attention = SelfAttention(cb, cfg.attention_heads, cfg.groups, cfg.attention_max_tokens)
        self.mid_block2 = ResBlock(cb, cb, **res)
        self.decoder = nn.ModuleList(DecoderLevel(cfg, level, emb_dim) for level in reversed(levels))

        norm, out = nn.GroupNorm(cfg.groups, c0), nn.Conv2d(c0, cfg.out_channels, 3, padding=1)
        assert out.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(norm, nn.SiLU(), out)

    @property
    def multiple(self) -> int:
        """Height and width the network needs to be divisible by (inputs are padded to it)."""
        return 2 ** (len(self.cfg.channel_mults) - 1)

    def forward(
        self,
        x: Float[Tensor, "b c_x h w"],
        t: Tensor | int | float,  # noqa: PYI041 - spelled out: beartype's runtime checks do not treat an int as a float
        cond: Float[Tensor, "b c_cond h w"],
    ) -> Float[Tensor, "b c_out h w"]:
        """Predict from a noisy sample.

        Args:
            x: Noisy sample ``[B, in_channels, H, W]``.
            t: Timesteps ``[B]`` (or a scalar for the whole batch), int or float, any scale (e.g. 0..999).
            cond: Conditioning image ``[B, cond_channels, H, W]``.

        Returns:
            ``[B, out_channels, H, W]``.
        """
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        b, _, height, width = x.shape
        if cond.shape != (b, cfg.cond_channels, height, width):
            raise ValueError(f"cond must be [{b}, {cfg.cond_channels}, {height}, {width}], got {tuple(cond.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or [{b}], got {tuple(t.shape)}")

        emb = self.time_embedding(t)
        h = pad_to_multiple(torch.cat([x, cond], dim=1), self.multiple)
        # channels_last lets oneDNN (CPU) and cuDNN pick their fast NHWC convolution kernels.
        h = self.stem(h.contiguous(memory_format=torch.channels_last))

        skips = []
        for level in self.encoder:
            skip, h = level(h, emb)
            skips.append(skip)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, emb)), emb)
        for level, skip in zip(self.decoder, reversed(skips), strict=True):
            h = level(h, skip, emb)

        return self.head(h)[:, :, :height, :width].contiguous()
