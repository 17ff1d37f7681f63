"""The report: the findings in a few lines, then weight bytes, activation peaks, deployments, recommended budgets
and what the numbers rest on."""

from __future__ import annotations

from collections.abc import Mapping

from model_repository.budgets import CAP_TOKENS, GB, GIB, PROMPT_TOKENS
from model_repository.colqwen2_serving.prompts import PROMPT_EXTRA_TOKENS

from .budgets import DEPLOYMENTS, OVERHEAD_NOTE, QUERY_TOKENS
from .model import GRAPH_NAMES, VARIANTS
from .slices import SLICE_LAYERS


def assumptions(overhead_gib: float) -> list[str]:
    """What the numbers rest on, for the report."""
    return [
        "Weights: the real-size ColQwen2 (2.209 B parameters) built on the meta device; bytes per initializer from "
        "the export rules, checked against the tiny export in tests/test_memory.py (equal up to the graph's "
        "shape constants, a few hundred bytes, not counted here). Trained weights hold no identical small tensors "
        "for the exporter to merge, so none are merged here.",
        "Weights are held once per process on the GPU (by the ONNX Runtime CUDA session or the TensorRT engine). "
        "A TensorRT engine build needs extra workspace while it runs: not counted.",
        f"Activations: simulated on a slice with the real widths ({SLICE_LAYERS} vision blocks, {SLICE_LAYERS} text "
        "layers, 2014-token vocabulary) in the exported node order, a node computed from weights alone (a QDQ "
        "weight's DequantizeLinear) right before its consumer as ONNX Runtime orders it; reshape-like ops are "
        "views; graph inputs are live throughout; weights excluded. The peak does not change from 2 layers on "
        "(checked on 1, 2 and 3 layers). An upper bound for an unfused runtime (ONNX Runtime CPU/CUDA) that "
        "reuses no buffer before its last consumer; kernels' scratch workspaces are part of the runtime overhead.",
        "TensorRT fuses attention and plans its own memory for the profile's max shapes: the 'fused attention' "
        "figures drop the QK^T..softmax score tensors and are an estimate, not a bound.",
        "int8 activations are those of the QDQ graph (float32 around the quantize/dequantize pairs, plus the float32 "
        "dequantized weight of the matmul in flight): what ONNX Runtime's CUDA provider runs. The fp32 graph's peak "
        "is listed beside it. Its weights stay int8 in memory: ONNX Runtime's constant folding leaves "
        "DequantizeLinear alone unless session.disable_quant_qdq is set. TensorRT runs the QDQ graph's float parts "
        "in fp16 (trt_fp16_enable) and fuses the quantize/dequantize pairs into its int8 kernels, so its int8 "
        "activations are smaller than the fused estimate here, which only drops the attention scores.",
        f"Runtime overhead: {overhead_gib:g} GiB for the one encoder process of a precision (both graphs, one CUDA "
        "context), an assumption. " + OVERHEAD_NOTE,
        "The encoder's CUDA sessions grow their arenas as requested (arena_extend_strategy kSameAsRequested, set by "
        "colqwen2_serving/sessions.py), not in powers of two.",
        "The vision and the text session run one after the other in the encoder process, but each keeps its arena, "
        "so their peaks add up.",
        f"Image prompts are {PROMPT_EXTRA_TOKENS} tokens + the visual tokens ({PROMPT_TOKENS} at the "
        f"{CAP_TOKENS}-token cap); queries at most {QUERY_TOKENS} tokens; a query call carries one zero visual row, "
        "as the runner sends.",
    ]


def _gb(n: float) -> str:
    return f"{n / GB:.3f}"


def _gib(n: float) -> str:
    return f"{n / GIB:.3f}"


def _which(flags: Mapping[str, bool]) -> str:
    """The precisions whose budgets a call is in (or whose TensorRT box it is), as "fp16, int8"."""
    return ", ".join(p for p, on in flags.items() if on)


def _exported(r: dict) -> str:
    fresh = [s for s in (r["slice"], *r["layer_check_slices"].values()) if not s.get("reused")]
    return f"{len(fresh)} of 3, {sum(s['export_seconds'] for s in fresh):.0f} s" if fresh else "none, all reused"


def summary(r: dict) -> list[str]:
    """The findings in a few lines: the deployments under today's budgets and the budgets that fit."""
    lines = ["## Summary", ""]
    by = {(d["precision"], d["basis"]): d for d in r["deployments"]}
    for precision in DEPLOYMENTS:
        call, fused = by[precision, "call"], by[precision, "fused"]
        weights = sum(call["weights"].values())
        verdict = "fits" if call["fits"] else "does **not** fit"
        lines.append(
            f"- **{precision}**: weights {_gb(weights)} GB; under today's GPU budgets {_gb(call['total'])} GB "
            f"({_gib(call['total'])} GiB) with unfused activations: {verdict} {call['limit'] / GB:g} GB "
            f"(fused-attention estimate {_gb(fused['total'])} GB: {'fits' if fused['fits'] else 'does not fit'})."
        )
        for basis, rec in r["recommended_gpu_budgets"][precision].items():
            if "budgets" not in rec:
                lines.append(f"  - {basis}: no budget fits.")
                continue
            b = rec["budgets"]
            cap = "" if rec["max_visual_tokens"] == CAP_TOKENS else f"max_visual_tokens {rec['max_visual_tokens']}, "
            lines.append(
                f"  - recommended ({basis}): {cap}max_session_images {b['max_session_images']} "
                f"(max_session_patches {b['max_session_patches']}), max_session_tokens {b['max_session_tokens']}, "
                f"max_session_sequences {b['max_session_sequences']}: {_gb(rec['total'])} GB."
            )
    return lines


def markdown(r: dict) -> str:
    """The report: weight bytes, activation peaks, deployments, recommended budgets, assumptions."""
    w = r["weights"]
    lines = [
        "# GPU memory of the real-size ColQwen2 deployments",
        "",
        f"`{r['command']}` on {r['machine']}, {r['date']}: {r['seconds']} s, peak RSS "
        f"{r['peak_rss_bytes'] / GIB:.1f} GiB (slices exported: {_exported(r)}). Checkpoint: {r['checkpoint']}, "
        f"{w['parameters']:,} parameters ({w['vision_parameters']:,} in the vision tower). "
        "GB = 1e9 bytes, GiB = 2^30 bytes.",
        "",
        *summary(r),
        "",
        *_weights_section(w),
        *_activations_section(r),
        *_deployments_section(r),
        *_recommendations_section(r),
        *_assumptions_section(r),
    ]
    return "\n".join(lines)


def _heading(title: str, intro: str, *table: str, blank_before: bool = True) -> list[str]:
    """A section's title, its paragraph and its table's header rows (if any)."""
    return [*([""] if blank_before else []), f"## {title}", "", intro, "", *table]


def _weights_section(w: dict) -> list[str]:
    """Weight bytes per graph and variant."""
    lines = _heading(
        "Weight bytes per graph and variant",
        "Exact, from the real-size model's parameters and the export rules (no 2.2 B export needed). Bytes.",
        "| variant | graph | matmul weights | quant. params | embedding | biases | norms, buffers | total GB | GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        blank_before=False,
    )
    for v in VARIANTS:
        for g in GRAPH_NAMES:
            b = w["bytes"][v][g]
            lines.append(
                f"| {v} | {g} | {b['matmul weights']:,} | {b['quantization parameters']:,} | {b['embedding']:,} | "
                f"{b['biases']:,} | {b['norms and buffers']:,} | {_gb(b['total'])} | {_gib(b['total'])} |"
            )
        total = sum(w["bytes"][v][g]["total"] for g in GRAPH_NAMES)
        lines.append(f"| {v} | **both** | | | | | | **{_gb(total)}** | {_gib(total)} |")
    return lines


def _activations_section(r: dict) -> list[str]:
    """Activation peaks per call, and the layer-count check."""
    lines = _heading(
        "Activation peak per call",
        "GB live at once during one call, weights excluded, from the graph's tensor shapes. First number: "
        "unfused (an upper bound for ONNX Runtime CPU/CUDA); in brackets: the fused-attention estimate (score "
        "tensors not materialised, as TensorRT's fused attention). `in budget`: the precisions whose GPU budgets "
        "let the runner send this call; `box`: whose TensorRT profile maxima it is. Length in patches (vision) or "
        "tokens (text).",
        "| graph | call | batch x length | in budget | box | fp32 | fp16 | int8 (QDQ) | int8_dynamic | fp16 peak at |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    )
    for a in r["activations"]:
        cells = " | ".join(f"{_gb(a['peak'][v])} ({_gb(a['fused_attention_estimate'][v])})" for v in VARIANTS)
        at = a["at"]["fp16"]
        big = ", ".join(f"{dt}{list(shape)}" for _, shape, dt, _ in at["largest"][:3])
        size = f"{a['batch']} x {a['length']}" + (f", {a['visual_rows']} visual rows" if a["visual_rows"] else "")
        note = f" ({a['note']})" if a["note"] else ""
        lines.append(
            f"| {a['graph']} | {a['name']}{note} | {size} | {_which(a['in_budget']) or 'no'} | "
            f"{_which(a['box'])} | {cells} | {at['node'].split(' ')[0]}: {big} |"
        )
    lines += [
        "",
        "Layer count (fp32 slices, GB): tables read by every layer (rotary cos/sin, the attention bias) stay live "
        "until the last layer, which a 1-layer graph reaches at once; from 2 layers on the peak does not change, "
        f"so the {SLICE_LAYERS}-layer slice stands for the 28-layer text tower and the 32-block vision tower.",
        "",
        "| call | 1 layer | 2 layers | 3 layers |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {c['scenario']} | {_gb(c['1'])} | {_gb(c['2'])} | {_gb(c['3'])} |" for c in r["layer_count_check"]]
    return lines


def _deployments_section(r: dict) -> list[str]:
    """Weights + activations + overhead per deployment, against its limit."""
    lines = _heading(
        "Deployments",
        "Weights of both graphs + the largest vision call + the largest text call (each session keeps its arena) "
        f"+ runtime overhead ({r['overhead_per_process_bytes'] / GIB:g} GiB for the one encoder process, assumed). "
        "Basis `call`: the largest calls ONNX Runtime can get under today's GPU budgets, unfused peaks (the "
        "verdict); `box`: TensorRT's profile maxima at unfused peaks; `fused`: the `call` calls with the "
        "fused-attention estimate; `box fused`: the profile maxima with the fused-attention estimate, the closest "
        "to what TensorRT may plan for. Items per call left at 0 in the budgets are as many items at the cap as the "
        "budget holds, so each TensorRT box is the call budget itself.",
        "| precision | basis | weights GB | vision call | GB | text call | GB | overhead GB | total GB | total GiB "
        "| limit GB | fits |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
    )
    for d in r["deployments"]:
        v, t = d["vision"], d["text"]
        lines.append(
            f"| {d['precision']} ({d['variant']} graphs) | {d['basis']} | {_gb(sum(d['weights'].values()))} | "
            f"{v['shape'][0]} x {v['shape'][1]} | {_gb(v['peak'])} | {t['shape'][0]} x {t['shape'][1]} | "
            f"{_gb(t['peak'])} | {_gb(d['overhead'])} | **{_gb(d['total'])}** | {_gib(d['total'])} | "
            f"{d['limit'] / GB:g} | {'yes' if d['fits'] else '**no**'} |"
        )
    return lines


def _recommendations_section(r: dict) -> list[str]:
    """The largest GPU call budgets that fit, per precision and basis."""
    lines = _heading(
        "Recommended GPU call budgets",
        f"Today (`render.SESSION_BUDGETS['gpu']`, item counts resolved): `{r['gpu_budgets_today']}`. The largest "
        "budgets whose vision + "
        "text peaks fit what the limit leaves after weights and overhead, at the 768-token cap: per images per "
        "vision call, the largest max_session_tokens of the text runner (max_session_sequences kept); the pick is "
        "the most images per vision call whose text budget still takes that many image prompts in one call. "
        "`unfused` is the bound to configure ONNX Runtime by; `fused` is the TensorRT estimate. TensorRT's text "
        f"profile box is max_session_sequences x {PROMPT_TOKENS} tokens (`runners.text_profile`): left at 0, the "
        f"sequences are max_session_tokens // {PROMPT_TOKENS} and the box is the call budget.",
    )
    for precision, bases in r["recommended_gpu_budgets"].items():
        for basis, rec in bases.items():
            head = f"- **{precision}, {basis}**: {_gb(rec['room_bytes'])} GB left for activations. "
            total = f" Total with them: {_gb(rec['total'])} GB." if "total" in rec else ""
            if rec["max_visual_tokens"] == CAP_TOKENS:
                lines.append(head + f"Recommended: `{rec['budgets']}`.{total}")
            elif rec["max_visual_tokens"]:
                lines.append(
                    head + f"One image and its prompt at the cap need {_gb(rec['needed_at_cap'])} GB: the cap "
                    f"must come down to max_visual_tokens {rec['max_visual_tokens']}, one item per call: "
                    f"`{rec['budgets']}`.{total}"
                )
            else:
                lines.append(head + "Nothing fits, not even one image of 4 visual tokens.")
            lines += [
                f"  - {f['images_per_vision_call']} image(s) per vision call ({_gb(f['vision_peak'])} GB): text "
                f"max_session_tokens up to {f['max_session_tokens']} ({f['image_prompts_per_text_call']} image "
                "prompts at the cap per call)"
                for f in rec["frontier"]
            ]
    return lines


def _assumptions_section(r: dict) -> list[str]:
    """The assumptions and the slice the peaks come from."""
    s = r["slice"]
    lines = ["", "## Assumptions", "", *[f"- {a}" for a in r["assumptions"]], ""]
    lines += [
        f"Slice: real widths, {SLICE_LAYERS} vision blocks + {SLICE_LAYERS} text layers, vocabulary "
        f"{s['vocab_size']} ({s['graph_parameters']['vision_encoder']:,} + {s['graph_parameters']['text_encoder']:,} "
        f"parameters), exported in {s['export_seconds']} s (fp32, fp16, int8 QDQ, int8 dynamic) to the workdir "
        "(reused by later runs).",
        "",
    ]
    return lines
