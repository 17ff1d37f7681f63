"""The exported graphs, as torch modules over the checkpoint's own modules and weights.

ColQwen2 is split the way it is built, into two graphs that together compute `ColQwen2.forward`:

- `VisionEncoderGraph`: a batch of images of *different* grids, each as uint8 patches in the
  processor's order (`grid.patchify`), padded to the longest with a patch mask -> the patch
  merger's output, one feature row per visual token. Normalisation and the patch embedding run in
  the graph, so what crosses into the encoder process stays uint8. Attention is batched per image
  with a key-padding bias, so an image only ever sees its own patches.
- `TextEncoderGraph`: the one language tower, shared by images and queries. Token ids, the
  attention mask and the M-RoPE positions (`grid.image_prompt_positions` for an image prompt,
  `grid.text_positions` for a query) come in; so do the visual features and, per token, the row of
  the feature that replaces it (-1: keep the token's embedding). That gather replaces
  `masked_scatter` (no ScatterND). Out: L2-normalised 128-dim vectors, zero on padding.

Every grid-dependent table (rotary angles, positions) is computed in the graph from integer
positions the caller passes, and the caller computes those with `colqwen2_serving.grid`: the
graphs hold no grid math of their own and serve any image size with one engine.

Numerics: matmuls and the MLPs' hidden activations run in `dtype` (float32 or float16); norms,
softmax, rotary embedding, the residual stream and the final L2 normalisation stay in float32,
because a Qwen2-VL tower built entirely in fp16 is known to collapse.

Memory: the vision tower attends over up to 3072 patches per image (768 visual tokens); its
float32 score matrix is 38 MB per head there. Attention runs over blocks of `HEADS_PER_BLOCK`
heads one after the other, so a runtime that does not fuse attention (ONNX Runtime on CPU or CUDA)
holds one block's scores at a time instead of all heads' (`python -m bench.memory`). TensorRT
fuses each block's attention anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_repository.colqwen2_serving.grid import PATCH_SIZE, PATCH_VALUES, PATCHES_PER_TOKEN

_NEG = torch.finfo(torch.float32).min
HEADS_PER_BLOCK = 2  # vision attention heads computed together (16 heads of the real model: 8 blocks)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """Linear in the layer's dtype, returned as float32 for the residual stream."""
    return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias).float()


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight.float() * x


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """bool mask -> additive float32 bias (0 where attended, float32 min elsewhere).

    An added bias gives the same softmax as masking with `where` (score + min rounds to min) and
    runs about 5x faster in ONNX Runtime than `where` against a full-size fill tensor.
    """
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, _NEG)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q, k, v: [B, H, L, D] in the matmul dtype (k, v expanded to H heads). Softmax in float32."""
    dtype = q.dtype
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
    probs = torch.softmax(scores + bias, dim=-1).to(dtype)
    return torch.matmul(probs, v)


def _blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`_attention` over blocks of HEADS_PER_BLOCK heads in turn, concatenated: the same result, one
    block's score matrix alive at a time."""
    heads = q.shape[1]
    blocks = [
        _attention(q[:, i : i + HEADS_PER_BLOCK], k[:, i : i + HEADS_PER_BLOCK], v[:, i : i + HEADS_PER_BLOCK], bias)
        for i in range(0, heads, HEADS_PER_BLOCK)
    ]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


def _in_dtype(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """Linear in the layer's dtype, kept in that dtype (the MLPs' wide hidden activations)."""
    return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)


def _rotary(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """int positions [..., A] -> angles [..., A * len(inv_freq)]: each axis' angles side by side."""
    freqs = positions.float().unsqueeze(-1) * inv_freq  # [..., A, F], float32 as the reference
    return freqs.flatten(-2)


class VisionEncoderGraph(nn.Module):
    """uint8 patches [B, N, 588], patch_positions int64 [B, N, 2], patch_mask int64 [B, N]
    -> visual features float32 [B, N/4, D]: `model.visual` on each image's own patches."""

    def __init__(self, model: nn.Module, processor) -> None:
        super().__init__()
        visual = model.visual
        vcfg = visual.config
        if (vcfg.patch_size, vcfg.spatial_merge_size) != (PATCH_SIZE, 2):
            raise ValueError(f"unsupported vision config: patch {vcfg.patch_size}, merge {vcfg.spatial_merge_size}")
        self.visual = visual
        self.heads = vcfg.num_heads
        ip = processor.image_processor
        per_channel = PATCH_SIZE * PATCH_SIZE  # patch values are (channel, row, col)
        mean = torch.tensor(ip.image_mean, dtype=torch.float32).repeat_interleave(per_channel) * 255.0
        std = torch.tensor(ip.image_std, dtype=torch.float32).repeat_interleave(per_channel) * 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        # Both temporal frames of a still image are the same picture, so the Conv3d over
        # (2, 14, 14) is one matmul with the kernel summed over time: half the work.
        w3 = visual.patch_embed.proj.weight  # [E, 3, 2, 14, 14]
        self.patch_embed = nn.Linear(PATCH_VALUES, w3.shape[0], bias=False)
        self.patch_embed.weight = nn.Parameter(w3.detach().sum(dim=2).reshape(w3.shape[0], -1), requires_grad=False)
        self.register_buffer("inv_freq", visual.rotary_pos_emb.inv_freq.float().clone())

    def forward(self, patches: torch.Tensor, patch_positions: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = patches.shape
        h = _linear((patches.float() - self.mean) / self.std, self.patch_embed)  # [B, N, E]
        e = h.shape[-1]
        hd = e // self.heads
        angles = _rotary(patch_positions, self.inv_freq)  # [B, N, hd/2]: rows' angles, then cols'
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(2)  # [B, N, 1, hd]
        cos, sin = angles.cos(), angles.sin()
        bias = _mask_bias(patch_mask.bool()[:, None, None, :])  # [B, 1, 1, N]: an image sees only itself
        for blk in self.visual.blocks:
            y = _layer_norm(h, blk.norm1)
            qkv = _linear(y, blk.attn.qkv).view(b, n, 3, self.heads, hd)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            dtype = blk.attn.qkv.weight.dtype
            q, k, v = (t.transpose(1, 2).to(dtype) for t in (q, k, v))
            o = _blocked_attention(q, k, v, bias)
            h = h + _linear(o.transpose(1, 2).reshape(b, n, e), blk.attn.proj)
            y = _in_dtype(_layer_norm(h, blk.norm2), blk.mlp.fc1)
            y = y * torch.sigmoid(1.702 * y)  # quick_gelu, as Qwen2-VL's vision MLP
            h = h + _linear(y, blk.mlp.fc2)
        merger = self.visual.merger
        y = _layer_norm(h, merger.ln_q).reshape(b, n // PATCHES_PER_TOKEN, e * PATCHES_PER_TOKEN)
        y = F.gelu(_linear(y, merger.mlp[0]))
        return _linear(y, merger.mlp[2])  # [B, N/4, D]


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask int64 [B, T]; position_ids int64 [3, B, T]; visual_features float32
    [R, D]; visual_index int64 [B, T] (row of visual_features for an image token, -1 otherwise)
    -> float32 [B, T, 128], L2-normalised, zero where attention_mask is 0."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.lm = model.language_model
        self.proj = model.custom_text_proj
        cfg = self.lm.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.register_buffer("inv_freq", self.lm.rotary_emb.inv_freq.float().clone())
        # M-RoPE: frequency band i takes its angle from axis i % 3 (temporal, height, width).
        bands, start = [], 0
        for i, width in enumerate(self.lm.rotary_emb.mrope_section):
            bands.append((i % 3, start, start + width))
            start += width
        if start * 2 != self.head_dim:
            raise ValueError(
                f"mrope_section {self.lm.rotary_emb.mrope_section} does not cover head_dim {self.head_dim}"
            )
        self.bands = bands

    def _rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.float().unsqueeze(-1) * self.inv_freq  # [3, B, T, hd/2]
        angles = torch.cat([freqs[axis, ..., lo:hi] for axis, lo, hi in self.bands], dim=-1)
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)  # [B, 1, T, hd]
        return angles.cos(), angles.sin()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        visual_features: torch.Tensor,
        visual_index: torch.Tensor,
    ) -> torch.Tensor:
        b, length = input_ids.shape
        h = self.lm.embed_tokens(input_ids).float()
        rows = visual_index.clamp(min=0).reshape(-1)
        visual = visual_features.float().index_select(0, rows).reshape(b, length, -1)  # Gather: [B, T, D]
        h = torch.where((visual_index >= 0).unsqueeze(-1), visual, h)
        cos, sin = self._rope(position_ids)
        idx = torch.arange(length, device=input_ids.device)
        causal = idx[None, :] <= idx[:, None]
        valid = attention_mask.bool()
        # A padded row has no valid key; letting it see itself keeps it finite (its output is
        # zeroed below), where the reference would produce NaN and then multiply it by zero.
        bias = _mask_bias((causal[None, None] & valid[:, None, None, :]) | (idx[None, :] == idx[:, None])[None, None])
        rep = self.heads // self.kv_heads
        for layer in self.lm.layers:
            attn = layer.self_attn
            x = _rms_norm(h, layer.input_layernorm)
            q = _linear(x, attn.q_proj).view(b, length, self.heads, self.head_dim).transpose(1, 2)
            k = _linear(x, attn.k_proj).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
            v = _linear(x, attn.v_proj).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            dtype = attn.q_proj.weight.dtype
            o = _attention(q.to(dtype), k.to(dtype), v.to(dtype), bias)
            h = h + _linear(o.transpose(1, 2).reshape(b, length, self.heads * self.head_dim), attn.o_proj)
            x = _rms_norm(h, layer.post_attention_layernorm)
            mlp = layer.mlp
            x = F.silu(_in_dtype(x, mlp.gate_proj)) * _in_dtype(x, mlp.up_proj)
            h = h + _linear(x, mlp.down_proj)
        e = _linear(_rms_norm(h, self.lm.norm), self.proj)
        # The reference divides by the norm with no epsilon; the clamp only matters where it would
        # produce 0/0, and those rows are zeroed by the mask anyway.
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return e * attention_mask.unsqueeze(-1).to(e.dtype)
