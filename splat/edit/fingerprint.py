"""What an inversion depends on in the diffusion pipeline, as one digest: :func:`pipeline_fingerprint`.

A cached inversion may be reused only by the same weights, tokenizer and scheduler. The pipeline's name is
not enough (a swapped VAE, a fused LoRA or a textual-inversion token keep it), nor is a few of the UNet's
weights. Every component of ``pipe.components`` enters the digest:

* modules (UNet / transformer, VAE, text encoders, ...): class, config, and for every parameter and buffer
  its name, shape, dtype, its float64 sum and a strided sample of at most ``SAMPLE`` of its values. A
  fused LoRA or fine-tune moves (almost) every value of the tensors it touches, so the sample sees it; a
  change of one value is seen by the sum. The cost is one read of the weights (a fraction of a second for
  SD 1.5 on a GPU), once per :class:`splat.edit.view_editor.ViewEditor`, never per view;
* tokenizers: class, vocabulary, BPE merges where the tokenizer has them, maximum length, special tokens;
* schedulers and anything else with a ``config``: class and config.

Computed afresh for each edit rather than cached on the pipeline: a pipeline is mutable (``fuse_lora``,
``load_textual_inversion``, a swapped scheduler), and a cached digest would outlive the change it describes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

SAMPLE = 1024  # values read from each tensor (strided over the flattened tensor)
FORMAT = b"splat-edit-pipeline-fingerprint-1\0"


def _config(obj) -> dict:
    config = getattr(obj, "config", None)
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        config = config.to_dict() if hasattr(config, "to_dict") else {"repr": repr(config)}
    return {k: v for k, v in config.items() if not k.startswith("_")}  # _name_or_path, _diffusers_version


def _tensor_digest(h, name: str, tensor) -> None:
    import torch

    t = tensor.detach()
    flat = t.reshape(-1)
    stride = max(1, flat.numel() // SAMPLE)
    sample = flat[::stride][:SAMPLE].to("cpu", torch.float64)  # [<= SAMPLE]
    total = float(flat.to(torch.float64).sum()) if flat.numel() else 0.0
    h.update(json.dumps([name, list(t.shape), str(t.dtype), repr(total)]).encode())
    h.update(sample.numpy().tobytes())


def _module_digest(h, module) -> None:
    for name, p in module.named_parameters():
        _tensor_digest(h, "p:" + name, p)
    for name, b in module.named_buffers():
        _tensor_digest(h, "b:" + name, b)


def _tokenizer_digest(h, tok) -> None:
    vocab = sorted(tok.get_vocab().items())
    merges = getattr(tok, "bpe_ranks", None)  # CLIP's BPE merges (slow tokenizer)
    if merges is not None:
        merges = sorted((" ".join(pair), rank) for pair, rank in merges.items())
    backend = getattr(tok, "backend_tokenizer", None)  # a fast tokenizer: its whole definition as JSON
    h.update(json.dumps([vocab, merges, getattr(tok, "model_max_length", None),
                         sorted(tok.special_tokens_map.items()) if hasattr(tok, "special_tokens_map") else None],
                        default=str).encode())  # fmt: skip
    if backend is not None:  # without the truncation / padding a call sets: state of use, not of the tokenizer
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        h.update(json.dumps(spec, sort_keys=True).encode())


def pipeline_fingerprint(pipe) -> str:
    """A hex digest of everything in ``pipe`` that changes an inversion (see the module docstring)."""
    import torch

    h = hashlib.sha256(FORMAT)
    components = getattr(pipe, "components", None) or {"unet": pipe.unet}
    with torch.no_grad():
        for key in sorted(components):
            obj = components[key]
            h.update(json.dumps([key, type(obj).__name__ if obj is not None else None,
                                 _config(obj)], sort_keys=True, default=str).encode())  # fmt: skip
            if obj is None:
                continue
            if isinstance(obj, torch.nn.Module):
                _module_digest(h, obj)
            elif hasattr(obj, "get_vocab"):
                _tokenizer_digest(h, obj)
    return h.hexdigest()
