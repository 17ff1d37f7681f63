"""Export-friendly forms of `ColQwen2.forward`, one module per artifact.

`ColQwen2.forward` does not export usefully: the vision tower splits attention over
data-dependent `cu_seqlens`, images are merged into the text with `masked_scatter`, and M-RoPE
position ids come from a Python loop. These wrappers compute the same function with the same
weights for the two shapes the service runs:

- `ImageEncoder`: a batch of S x S RGB uint8 images (letterboxed by the preprocessing model)
  -> [batch, L, 128]. With a fixed grid every image has the same prompt, the same visual token
  positions and the same rotary tables, so all of them are constants computed once here by the
  reference code itself; attention is batched per image; normalisation and patchify run in the
  graph so the tensor crossing into the encoder is uint8 (4x smaller than float32).
- `QueryEncoder`: token ids and attention mask (left padded, as colpali-engine pads)
  -> [batch, T, 128].

Numerics: matmuls run in `dtype` (float32 or float16); norms, softmax, rotary embedding, the
residual stream and the final L2 normalisation stay in float32, because a Qwen2-VL tower built
entirely in fp16 is known to collapse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NEG = torch.finfo(torch.float32).min


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


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """q, k, v: [B, H, L, D] in the matmul dtype (k, v expanded to H heads). Softmax in float32."""
    dtype = q.dtype
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1).to(dtype)
    return torch.matmul(probs, v)


class _TextTower(nn.Module):
    """The Qwen2-VL decoder with M-RoPE tables given by the caller, then projection and L2 norm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.lm = model.language_model
        self.proj = model.custom_text_proj
        cfg = self.lm.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """h: [B, L, D] float32; cos/sin: broadcastable to [B, 1, L, hd]; bias: [B or 1, 1, L, L] additive."""
        b, length, _ = h.shape
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
            o = o.transpose(1, 2).reshape(b, length, self.heads * self.head_dim)
            h = h + _linear(o, attn.o_proj)
            x = _rms_norm(h, layer.post_attention_layernorm)
            mlp = layer.mlp
            gate = _linear(x, mlp.gate_proj)
            x = F.silu(gate) * _linear(x, mlp.up_proj)
            h = h + _linear(x, mlp.down_proj)
        h = _rms_norm(h, self.lm.norm)
        e = _linear(h, self.proj)
        # The reference divides by the norm with no epsilon; the clamp only matters where it would
        # produce 0/0, and those rows are zeroed by the mask anyway.
        return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ImageEncoder(nn.Module):
    """uint8 [B, S, S, 3] RGB -> float32 [B, L, 128], equal to `ColQwen2.forward` on that image."""

    def __init__(self, model: nn.Module, processor, image_size: int) -> None:
        super().__init__()
        visual = model.visual
        vcfg = visual.config
        patch, merge = vcfg.patch_size, vcfg.spatial_merge_size
        if image_size % (patch * merge):
            raise ValueError(f"image size {image_size} is not a multiple of {patch * merge}")
        self.visual = visual
        self.text = _TextTower(model)
        self.image_size = image_size
        self.patch = patch
        self.merge = merge
        self.grid = image_size // patch
        self.vision_heads = vcfg.num_heads
        ip = processor.image_processor
        self.register_buffer("mean", torch.tensor(ip.image_mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(ip.image_std).view(1, 3, 1, 1) * 255.0)
        # Both temporal frames of a still image are the same picture, so the Conv3d over
        # (2, 14, 14) equals a Conv2d with the kernel summed over time: half the work.
        w3 = visual.patch_embed.proj.weight
        self.patch_weight = nn.Parameter(w3.detach().sum(dim=2), requires_grad=False)

        with torch.no_grad():
            grid_thw = torch.tensor([[1, self.grid, self.grid]])
            vpos = _vision_position_ids(self.grid, merge)
            vcos, vsin = visual.rotary_pos_emb(w3, vpos)
            self.register_buffer("vision_cos", vcos.float().unsqueeze(1))  # [N, 1, hd]
            self.register_buffer("vision_sin", vsin.float().unsqueeze(1))

            batch = _image_prompt_ids(processor, self.grid, merge)
            input_ids = batch["input_ids"]
            image_token = model.config.image_token_id
            is_image = (input_ids[0] == image_token).nonzero().flatten()
            self.n_prefix = int(is_image[0])
            self.n_visual = int(is_image.numel())
            embeds = model.language_model.embed_tokens(input_ids[0]).float()
            self.register_buffer("prefix_embeds", embeds[: self.n_prefix].clone())
            self.register_buffer("suffix_embeds", embeds[self.n_prefix + self.n_visual :].clone())
            position_ids, _ = model.get_rope_index(
                input_ids,
                mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=grid_thw,
                attention_mask=batch["attention_mask"],
            )
            cos, sin = model.language_model.rotary_emb(embeds, position_ids)
            self.register_buffer("text_cos", cos.float().unsqueeze(1))  # [1, 1, L, hd]
            self.register_buffer("text_sin", sin.float().unsqueeze(1))
            length = input_ids.shape[1]
            causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
            self.register_buffer("causal_bias", _mask_bias(causal))
        self.seq_len = int(input_ids.shape[1])

    def _vision(self, pixels: torch.Tensor) -> torch.Tensor:
        b = pixels.shape[0]
        g, m = self.grid, self.merge
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        x = F.conv2d(x.to(self.patch_weight.dtype), self.patch_weight, stride=self.patch)  # [B, E, g, g]
        e = x.shape[1]
        # Reorder patches into the processor's merge-block order (2 x 2 neighbours adjacent).
        x = x.reshape(b, e, g // m, m, g // m, m).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, e)
        h = x.float()
        heads = self.vision_heads
        hd = e // heads
        for blk in self.visual.blocks:
            y = _layer_norm(h, blk.norm1)
            qkv = _linear(y, blk.attn.qkv).view(b, g * g, 3, heads, hd)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
            q = q * self.vision_cos + _rotate_half(q) * self.vision_sin
            k = k * self.vision_cos + _rotate_half(k) * self.vision_sin
            dtype = blk.attn.qkv.weight.dtype
            o = _attention(q.transpose(1, 2).to(dtype), k.transpose(1, 2).to(dtype), v.transpose(1, 2).to(dtype), None)
            o = o.transpose(1, 2).reshape(b, g * g, e)
            h = h + _linear(o, blk.attn.proj)
            y = _layer_norm(h, blk.norm2)
            y = _linear(y, blk.mlp.fc1)
            y = y * torch.sigmoid(1.702 * y)  # quick_gelu, as Qwen2-VL's vision MLP
            h = h + _linear(y, blk.mlp.fc2)
        merger = self.visual.merger
        y = _layer_norm(h, merger.ln_q).reshape(b, (g * g) // (m * m), e * m * m)
        y = _linear(y, merger.mlp[0])
        y = F.gelu(y)
        return _linear(y, merger.mlp[2])  # [B, N/4, D]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b = pixel_values.shape[0]
        visual = self._vision(pixel_values)
        d = visual.shape[-1]
        h = torch.cat(
            [
                self.prefix_embeds.unsqueeze(0).expand(b, -1, d),
                visual,
                self.suffix_embeds.unsqueeze(0).expand(b, -1, d),
            ],
            dim=1,
        )
        return self.text(h, self.text_cos, self.text_sin, self.causal_bias)


class QueryEncoder(nn.Module):
    """int64 input_ids, attention_mask [B, T] (left padded) -> float32 [B, T, 128]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embed = model.language_model.embed_tokens
        self.text = _TextTower(model)
        self.register_buffer("inv_freq", model.language_model.rotary_emb.inv_freq.float().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        h = self.embed(input_ids).float()
        # Text-only input: the reference uses positions 0..T-1 on all three M-RoPE axes, padding
        # included, so the three sections collapse into one ordinary rotary table.
        pos = torch.arange(length, device=input_ids.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        valid = attention_mask.bool()
        idx = torch.arange(length, device=input_ids.device)
        causal = idx[None, :] <= idx[:, None]
        # A padded query row has no valid key; letting it see itself keeps it finite (its output is
        # zeroed below), where the reference would produce NaN and then multiply it by zero.
        mask = (causal[None, None] & valid[:, None, None, :]) | (idx[None, :] == idx[:, None])[None, None]
        e = self.text(h, cos, sin, _mask_bias(mask))
        return e * attention_mask.unsqueeze(-1).to(e.dtype)


def _vision_position_ids(grid: int, merge: int) -> torch.Tensor:
    """(row, col) of each patch in the processor's merge-block order: [N, 2]."""
    h, w = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    shape = (grid // merge, merge, grid // merge, merge)
    h = h.reshape(shape).transpose(1, 2).flatten()
    w = w.reshape(shape).transpose(1, 2).flatten()
    return torch.stack([h, w], dim=-1)


def _image_prompt_ids(processor, grid: int, merge: int) -> dict[str, torch.Tensor]:
    """The token ids colpali-engine builds for one image of grid x grid patches."""
    n_visual = (grid // merge) ** 2
    prompt = processor.visual_prompt_prefix.replace(processor.image_token, processor.image_token * n_visual)
    enc = processor.tokenizer([prompt], return_tensors="pt")
    image_id = processor.image_token_id
    enc["mm_token_type_ids"] = (enc["input_ids"] == image_id).long()
    return enc
