"""RWKV-LM's checkpoint format (BlinkDL): write our RWKV-4 / RWKV-7 LMs as the ``.pth`` state dicts that
RWKV-LM trains and the official ``rwkv`` pip package runs, and read such checkpoints back.

    emb.weight (V, C)                        <-> embed.weight
    blocks.0.ln0.{weight,bias}               <-> embed_norm (RWKV's ln0, applied once after the embedding)
    blocks.N.ln1 / ln2                       <-> blocks.N.norm1 / norm2
    blocks.N.att.<name>, blocks.N.ffn.<name> <-> blocks.N.mixer.<name>, blocks.N.mlp.<name>
    ln_out, head.weight (V, C)               <-> norm_f, head.weight

Per-channel vectors are (C,) here and (1, 1, C) in the file, except RWKV-4's time_decay / time_first and
RWKV-7's ln_x, which are (C,) in both. The version is read from the names (RWKV-7 has ``att.r_k``, RWKV-4
``att.time_decay`` with ``att.time_mix_k``) and the config from the shapes, so any RWKV-4 or RWKV-7 ``.pth``
of RWKV-LM loads:

    from papers.rwkv.blinkdl import load_blinkdl
    lm = load_blinkdl("/path/to/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth")   # a published checkpoint
    logits = lm.logits(idx)                                                          # (B, T, V), like every zoo LM

(published RWKV-7 checkpoints use head_size 64, which RWKV7Config takes from ``att.r_k``). The official
package loads what ``save_blinkdl`` writes: ``rwkv.model.RWKV(path, "cpu fp32")`` for RWKV-4, and with
``RWKV_V7_ON=1`` ``rwkv.model.RWKV_x070(path without ".pth", "cpu fp32")`` for RWKV-7.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from common.errors import PaperzooError
from common.models import zoo
from common.models.lm import CausalLM

from .model import RWKV4Config, RWKV7Config, TimeMix4, TimeMix7

_NAMES = (  # (ours, theirs) name prefixes; {i}: a block index
    ("embed.", "emb."),
    ("embed_norm.", "blocks.0.ln0."),
    ("blocks.{i}.norm1.", "blocks.{i}.ln1."),
    ("blocks.{i}.norm2.", "blocks.{i}.ln2."),
    ("blocks.{i}.mixer.", "blocks.{i}.att."),
    ("blocks.{i}.mlp.", "blocks.{i}.ffn."),
    ("norm_f.", "ln_out."),
)
RWKV7_MARK = "blocks.0.att.r_k"  # only RWKV-7 checkpoints have it (the bonus weights, (H, N))
_FLAT_IN_FILE = re.compile(r"\.(time_decay|time_first|ln_x\.\w+)$")  # 1-D in both layouts


def _rename(name: str, to_theirs: bool) -> str:
    """A state-dict name in the other layout (head.weight is the same in both)."""
    for ours, theirs in _NAMES:
        source, target = (ours, theirs) if to_theirs else (theirs, ours)
        found = re.match(re.escape(source).replace(re.escape("{i}"), r"(?P<i>\d+)"), name)
        if found:
            return target.replace("{i}", found.groupdict().get("i") or "") + name[found.end() :]
    return name


def _version(model: CausalLM) -> int:
    mixers = {type(block.mixer) for block in model.blocks}
    if mixers == {TimeMix4}:
        return 4
    if mixers == {TimeMix7}:
        return 7
    raise PaperzooError(
        f"save_blinkdl: not an RWKV-4 or RWKV-7 LM (mixers: {sorted(m.__name__ for m in mixers)})"
    )


def save_blinkdl(model: CausalLM, path: str | Path) -> Path:
    """Write ``model`` (built by ``zoo.build("rwkv4" | "rwkv7", ...)``) as an RWKV-LM ``.pth`` (fp32)."""
    _version(model)
    out = {}
    for name, tensor in model.state_dict().items():
        theirs = _rename(name, to_theirs=True)
        tensor = tensor.detach().float().cpu().clone()
        if (
            tensor.dim() == 1
            and (".att." in theirs or ".ffn." in theirs)
            and not _FLAT_IN_FILE.search(theirs)
        ):
            tensor = tensor.view(1, 1, -1)
        out[theirs] = tensor
    path = Path(path)
    torch.save(out, path)
    return path


def _config(sd: dict[str, torch.Tensor], path: Path):
    """(zoo name, config) from the names and shapes of an RWKV-LM state dict."""
    try:
        vocab_size, d_model = sd["emb.weight"].shape
        n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        ffn_hidden = sd["blocks.0.ffn.key.weight"].shape[0]
        if RWKV7_MARK in sd:
            n_heads, head_size = sd[RWKV7_MARK].shape
            v_lora = [sd[k].shape[1] for k in sd if k.endswith(".att.v1") and not k.startswith("blocks.0.")]
            return "rwkv7", RWKV7Config(
                vocab_size, d_model, n_layers, head_size, ffn_hidden,
                decay_lora=sd["blocks.0.att.w1"].shape[1], a_lora=sd["blocks.0.att.a1"].shape[1],
                v_lora=v_lora[0] if v_lora else 0, gate_lora=sd["blocks.0.att.g1"].shape[1],
            )  # fmt: skip
        if "blocks.0.att.time_decay" in sd and "blocks.0.att.time_mix_k" in sd:
            return "rwkv4", RWKV4Config(vocab_size, d_model, n_layers, ffn_hidden)
    except (KeyError, ValueError) as missing:
        raise PaperzooError(f"{path}: not an RWKV-LM checkpoint (missing or malformed {missing})") from None
    raise PaperzooError(f"{path}: neither RWKV-4 (att.time_decay, att.time_mix_k) nor RWKV-7 (att.r_k)")


def load_blinkdl(path: str | Path) -> CausalLM:
    """An RWKV-LM ``.pth`` (RWKV-4 or RWKV-7) as our LM, in fp32, its config read from the tensor shapes."""
    path = Path(path)
    if not path.is_file():
        raise PaperzooError(f"no checkpoint at {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: one line, not a pickle traceback
        raise PaperzooError(f"{path}: not a torch checkpoint ({type(error).__name__})") from None
    name, config = _config(sd, path)
    model = zoo.build(name, config)
    ours = {}
    for theirs, tensor in sd.items():
        if re.fullmatch(r"blocks\.0\.att\.v[012]", theirs):
            continue  # layer 0 of RWKV-7 has no value residual (some RWKV-LM versions store unused ones)
        tensor = tensor.float()
        ours[_rename(theirs, to_theirs=False)] = tensor.view(-1) if tensor.dim() == 3 else tensor
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise PaperzooError(f"{path}: {name} checkpoint does not match (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]})")  # fmt: skip
    return model
