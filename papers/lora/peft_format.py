"""LoRA adapters of our GPT in Hugging Face peft's format, for the HF GPT-2 export of the model.

``save_peft(model, dir)`` writes what ``peft.PeftModel.from_pretrained(GPT2LMHeadModel, dir)`` loads onto
the model that ``common.models.gpt.save_hf_gpt2`` exports; ``load_peft(model, dir)`` injects and loads an
adapter saved by peft (``save_pretrained``) or by ``save_peft`` into a plain GPT from ``load_hf_gpt2``:

    adapter_config.json          peft's LoraConfig: peft_type "LORA", r, lora_alpha, target_modules,
                                 lora_dropout, fan_in_fan_out true (GPT-2's Conv1D), bias "none", ...
    adapter_model.safetensors    base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight (r, d_in)
                                 base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight (d_out, r)

Module names: our ``blocks.{i}.mixer.qkv`` / ``mixer.proj`` / ``mlp.fc`` / ``mlp.proj`` are HF's
``transformer.h.{i}.attn.c_attn`` / ``attn.c_proj`` / ``mlp.c_fc`` / ``mlp.c_proj``. peft keeps A and B in
nn.Linear orientation even on a Conv1D (``fan_in_fan_out`` transposes only W0), so they are stored as is.

GPT-2's c_attn fuses W_q, W_k, W_v, and peft adapts it as one matrix: one A (r, d), one B (3 d, r) — our
adapter without ``slices``. An adapter on chosen slices (the paper's W_q, W_v) has no peft module of its
own, but it is exactly a whole-c_attn adapter of rank m r with a block-structured B (``LoRALinear.full_B``):
A' = [A_q; A_v], B' = [[B_q, 0], [0, 0], [0, B_v]], r' = 2 r, α' = 2 α, so α' / r' = α / r. ``save_peft``
writes it that way (``rank_pattern`` / ``alpha_pattern`` where modules differ in r'): peft computes the
same ΔW and the same outputs (equal up to summation order; α' / r' is the same float for integer α).
Trained further in peft, B' would lose its zero blocks: the equivalence is for inference. The slices are
recorded in the safetensors metadata (``paperzoo_lora_slices``, ignored by peft), so ``load_peft``
restores the per-slice pairs exactly and refuses a B' whose off-block entries are not zero.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.errors import PaperzooError
from common.models.gpt import hf_key_map
from common.models.lm import CausalLM
from papers.lora.lora import LoRALinear, inject, lora_modules

PREFIX = "base_model.model."  # peft's name for the wrapped model in its saved keys
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
SLICES_KEY = "paperzoo_lora_slices"


def hf_module_names(model: CausalLM) -> dict[str, str]:
    """Our projection -> its HF GPT-2 module: 'blocks.0.mixer.qkv' -> 'transformer.h.0.attn.c_attn'."""
    return {
        ours.removesuffix(".weight"): "transformer." + hf.removesuffix(".weight")
        for hf, ours, conv1d in hf_key_map(len(model.blocks))
        if conv1d
    }


def _dropout(layer: LoRALinear) -> float:
    return getattr(layer.dropout, "p", 0.0)


def _target_modules(hf_names: list[str], n_layers: int) -> list[str]:
    """peft target_modules (matched as name suffixes): 'attn.c_attn' when every layer's is adapted, else
    the full module names."""
    by_kind: dict[str, list[str]] = {}
    for name in hf_names:
        by_kind.setdefault(name.split(".", 3)[3], []).append(name)  # transformer.h.{i}.<kind>
    return sorted({kind if len(names) == n_layers else n for kind, names in by_kind.items() for n in names})


def save_peft(model: CausalLM, directory: str | Path, base_model_name_or_path: str | None = None) -> None:
    """Write the LoRA adapters of ``model`` (our GPT) as a peft adapter of its HF GPT-2 export."""
    layers, names = lora_modules(model), hf_module_names(model)
    if not layers:
        raise PaperzooError("the model has no LoRA adapter to save")
    missing = [name for name in layers if name not in names]
    if missing:
        raise PaperzooError(f"'{missing[0]}' has no counterpart in the HF GPT-2 format; peft cannot load it")
    dropouts = {_dropout(layer) for layer in layers.values()}
    if len(dropouts) > 1:
        raise PaperzooError(f"peft has one lora_dropout per adapter; these layers use {sorted(dropouts)}")
    # a module with m enabled slices is one rank-m r adapter with α' = m α (module docstring)
    rank_alpha = {names[n]: (l.n_enabled * l.r, l.n_enabled * l.alpha) for n, l in layers.items()}
    (r, alpha), _ = Counter(rank_alpha.values()).most_common(1)[0]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {hf: ra[0] for hf, ra in rank_alpha.items() if ra[0] != r},
        "alpha_pattern": {hf: ra[1] for hf, ra in rank_alpha.items() if ra[1] != alpha},
        "target_modules": _target_modules(list(rank_alpha), len(model.blocks)),
        "lora_dropout": dropouts.pop(),
        "fan_in_fan_out": True,  # GPT-2's Conv1D stores W0 as (in, out)
        "bias": "none",
        "lora_bias": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    tensors, slices = {}, {}
    for name, layer in layers.items():
        key = f"{PREFIX}{names[name]}"
        tensors[f"{key}.lora_A.weight"] = layer.lora_A.detach().contiguous().cpu()
        tensors[f"{key}.lora_B.weight"] = layer.full_B().detach().contiguous().cpu()
        if len(layer.slices) > 1:
            slices[names[name]] = layer.slices
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt", SLICES_KEY: json.dumps(slices)})


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern / alpha_pattern rule: the first key k with re.match(rf"(.*\\.)?({k})$", module)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_peft(model: CausalLM, directory: str | Path) -> list[str]:
    """Inject and load the peft LoRA adapter in ``directory`` into our plain GPT; returns the adapted names.

    The adapted modules come from the tensors' names; r' from A's shape; α' from lora_alpha / alpha_pattern.
    """
    directory = Path(directory)
    if lora_modules(model):
        raise PaperzooError("the model already has LoRA adapters; load a peft adapter into a plain GPT")
    config = json.loads((directory / CONFIG).read_text())
    unsupported = {
        "peft_type": ("LORA",),
        "bias": ("none",),
        "use_rslora": (False,),
        "use_dora": (False,),
        "lora_bias": (False,),
        "modules_to_save": (None, []),
    }
    for field, allowed in unsupported.items():
        if config.get(field, allowed[0]) not in allowed:
            raise PaperzooError(f"{directory / CONFIG}: {field}={config[field]!r} is not plain LoRA")
    tensors = load_file(directory / WEIGHTS)
    with safe_open(directory / WEIGHTS, "pt") as f:
        slices = json.loads((f.metadata() or {}).get(SLICES_KEY, "{}"))
    ours = {hf: name for name, hf in hf_module_names(model).items()}
    for key in sorted(k for k in tensors if k.endswith(".lora_A.weight")):
        hf = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        hf = hf if hf.startswith("transformer.") else "transformer." + hf  # saved from a GPT2Model
        if hf not in ours:
            raise PaperzooError(f"{directory / WEIGHTS}: '{key}' is no HF GPT-2 projection")
        A, full_B = tensors.pop(key), tensors.pop(key.replace(".lora_A.", ".lora_B."), None)
        m = sum(slices.get(hf, [True]))  # enabled slices: r' = m r, α' = m α
        alpha = _pattern_value(config.get("alpha_pattern") or {}, hf, config["lora_alpha"])
        inject(model, {ours[hf]: slices.get(hf)}, A.shape[0] // m, alpha / m, config.get("lora_dropout", 0.0))
        layer = model.get_submodule(ours[hf])
        if full_B is None or A.shape != layer.lora_A.shape:
            raise PaperzooError(
                f"{directory / WEIGHTS}: no lora_B, or A of shape {tuple(A.shape)}, for '{hf}'"
            )
        layer.lora_A.data.copy_(A)
        layer.load_full_B(full_B)
    if tensors:
        raise PaperzooError(f"{directory / WEIGHTS}: unexpected tensors {sorted(tensors)[:3]}")
    return list(lora_modules(model))
