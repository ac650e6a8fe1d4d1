"""Loading diffusion pipelines: a hub id, a local folder, a single checkpoint file, or a pipeline.

Every way in ends in one of the families editkit edits (:data:`FAMILIES`): a diffusers
``StableDiffusionPipeline`` (``"sd"``, SD 1.x / 2.x) or ``StableDiffusionXLPipeline`` (``"sdxl"``) with a DDIM
scheduler (the sampler Prompt-to-Prompt, null-text inversion and Plug-and-Play are defined with), or a
rectified-flow ``StableDiffusion3Pipeline`` (``"sd3"``, SD3 / SD3.5) or ``FluxPipeline`` (``"flux"``, FLUX.1)
with its own flow-matching scheduler. :func:`detect_family` tells the family from a path or hub id without
loading weights (so a command can refuse a method the model does not support first); :func:`family_of` tells
it from a loaded pipeline. When no weights can be found, :class:`ModelNotFoundError` says how to point at a
model instead of a stack trace from deep inside the hub client; a model of another family gets a one-line
:class:`UnsupportedModelError`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError


class _DropTorchvisionFallbackNotice(logging.Filter):
    """transformers warns, when diffusers' pipeline modules merely *import* ``CLIPImageProcessor`` (and
    ``SiglipImageProcessor``), that torchvision is missing and it falls back to the PIL processor. editkit
    never loads an image processor (no safety checker, no feature extractor, no IP-Adapter), so on every
    command that line is noise; drop exactly that record, nothing else from transformers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("requires torchvision (not installed)" in message and "ImageProcessor" in message)


logging.getLogger("transformers.utils.import_utils").addFilter(_DropTorchvisionFallbackNotice())

HOW_TO_POINT = (
    "Point editkit at a Stable Diffusion model in one of these ways:\n"
    "  - a local diffusers folder (with model_index.json), e.g. load_pipeline('/models/sd15')\n"
    "  - a single checkpoint file, e.g. load_pipeline('/models/v1-5-pruned-emaonly.safetensors')\n"
    "  - a Hugging Face hub id already in your local cache, or with network access,\n"
    "    e.g. load_pipeline('stable-diffusion-v1-5/stable-diffusion-v1-5')\n"
    "  - an already-loaded diffusers StableDiffusionPipeline / StableDiffusionXLPipeline."
)


HOW_TO_POINT_CLI = (
    "Point editkit at a Stable Diffusion model with --model PATH_OR_HUB_ID:\n"
    "  - a local diffusers folder (with model_index.json), e.g. --model /models/sd15\n"
    "  - a single checkpoint file, e.g. --model /models/v1-5-pruned-emaonly.safetensors\n"
    "  - a Hugging Face hub id already in your local cache, or with network access,\n"
    "    e.g. --model stable-diffusion-v1-5/stable-diffusion-v1-5"
)

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")

# family -> (pipeline class, words for messages, editing methods). The flow families' methods live in
# editkit.flow; the UNet families' in editkit.editing / editkit.pnp.
FAMILIES = {
    "sd": ("StableDiffusionPipeline", "Stable Diffusion 1.x/2.x", ("p2p", "pnp")),
    "sdxl": ("StableDiffusionXLPipeline", "SDXL", ("p2p", "pnp")),
    "sd3": ("StableDiffusion3Pipeline", "SD3 / SD3.5", ("flowedit", "rf-inversion")),
    "flux": ("FluxPipeline", "FLUX.1", ("flowedit", "rf-inversion")),
}
FLOW_FAMILIES = ("sd3", "flux")
_BY_CLASS = {cls: family for family, (cls, _, _) in FAMILIES.items()}


class UnsupportedModelError(ValueError):
    """The model is of a family editkit cannot edit (one line, naming the family)."""


def family_name(family: str) -> str:
    return FAMILIES[family][1]


def methods_for(family: str) -> tuple[str, ...]:
    """The editing methods editkit offers for ``family``."""
    return FAMILIES[family][2]


def check_method(family: str | None, method: str) -> None:
    """A clear ``ValueError`` when ``method`` is not one ``family`` supports (nothing to say when unknown)."""
    if family is not None and method not in methods_for(family):
        raise ValueError(f"method {method!r} is not available for {family_name(family)} models; "
                         f"use one of: {', '.join(methods_for(family))}")


def _family_of_class(class_name: str, where: str) -> str:
    if class_name in _BY_CLASS:
        return _BY_CLASS[class_name]
    raise UnsupportedModelError(
        f"{where} is a {class_name}: editkit edits Stable Diffusion 1.x/2.x, SDXL, SD3 / SD3.5 and FLUX.1 "
        f"({', '.join(cls for cls, _, _ in FAMILIES.values())})"
    )


def family_of(pipe) -> str:
    """The family of a loaded pipeline (``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"``); raises
    :class:`UnsupportedModelError` for another one."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in _BY_CLASS:
            return _BY_CLASS[cls.__name__]
    return _family_of_class(type(pipe).__name__, "the pipeline")


def detect_family(model, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The family of ``model`` without loading its weights, or ``None`` when it cannot be told.

    A pipeline: its class. A diffusers folder: ``_class_name`` in its ``model_index.json``. A single
    ``.safetensors`` file: its tensor names (SD3: ``joint_blocks``, FLUX: ``double_blocks``, SDXL: a second
    text encoder; else SD). A hub id: the ``model_index.json`` in the local hub cache, else its name
    (``stable-diffusion-3``, ``sd3``, ``flux``, ``xl``). Raises :class:`UnsupportedModelError` for a folder or
    pipeline of another family.
    """
    if not isinstance(model, str | os.PathLike):  # a path or hub id is told without importing diffusers
        return family_of(model) if _is_pipeline(model) else None
    name = str(model)
    path = Path(name).expanduser()
    if path.is_dir():
        return _family_from_index(path / "model_index.json", str(path))
    if path.is_file():
        return _family_from_file(path)
    if name.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(name, "model_index.json", cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception:  # noqa: BLE001 - not a valid repo id, no cache: fall back on the name
        index = None
    if isinstance(index, str) and Path(index).is_file():
        return _family_from_index(Path(index), name)
    lower = name.lower()
    if "stable-diffusion-3" in lower or "sd3" in lower:
        return "sd3"
    if "flux" in lower:
        return "flux"
    if "xl" in lower:
        return "sdxl"
    return None


def _family_from_index(index: Path, where: str) -> str | None:
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # the loader names the problem
    return None if class_name is None else _family_of_class(str(class_name), where)


def _family_from_file(path: Path) -> str | None:
    if path.suffix != ".safetensors":
        return "sdxl" if "xl" in path.name.lower() else None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (OSError, SafetensorError):
        return None
    if any(".joint_blocks." in k or k.startswith("joint_blocks.") for k in keys):
        return "sd3"
    if any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys):
        return "flux"
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return "sdxl"
    return "sd"


class ModelNotFoundError(FileNotFoundError):
    """No Stable Diffusion weights could be found for what the user named.

    ``problem`` says what was wrong; ``str(e)`` adds how to point at a model from Python, :meth:`for_cli`
    the same advice in command-line words.
    """

    def __init__(self, problem: str):
        super().__init__(problem.rstrip() + "\n" + HOW_TO_POINT)
        self.problem = problem.rstrip()

    def __str__(self) -> str:
        return self.args[0]

    def for_cli(self) -> str:
        return self.problem + "\n" + HOW_TO_POINT_CLI


def check_device(device) -> torch.device | None:
    """``None`` or a device this machine has; a clear ``ValueError`` otherwise (``"banana"``, CUDA without a GPU)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICE_TYPES)} "
                         "(optionally with an index, e.g. cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use cpu)")
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"device {device!r} is not supported; expected one of {', '.join(DEVICE_TYPES)}")
    return dev


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device | str, family: str | None = None) -> torch.dtype:
    """Half precision on a GPU as each model expects it (bf16 for FLUX.1, which overflows in fp16; fp16 for
    the others), fp32 on the CPU (half-precision matmuls are slow or missing there)."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if family == "flux" else torch.float16


def _is_pipeline(obj) -> bool:
    from diffusers import DiffusionPipeline

    return isinstance(obj, DiffusionPipeline)


def _to_ddim(pipe):
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def _guess_xl_from_file(path: Path) -> bool:
    """SDXL single files carry a second text encoder under 'conditioner.embedders.1'."""
    if path.suffix != ".safetensors":
        return "xl" in path.name.lower()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return any(k.startswith("conditioner.embedders.1") for k in f.keys())


def load_pipeline(
    model,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    scheduler: str = "ddim",
    config: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    offload: bool = False,
):
    """Load a pipeline for editing: Stable Diffusion 1.x/2.x, SDXL, SD3 / SD3.5 or FLUX.1.

    The family loaded is ``editkit.models.family_of(pipe)`` (and logged at INFO level).

    Args:
        model: a hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``), a local diffusers folder, a
            single ``.safetensors`` / ``.ckpt`` checkpoint, or an already-loaded diffusers pipeline (returned
            as is, apart from the scheduler and device).
        device: where to put it; default CUDA when available, else CPU.
        dtype: default on CUDA bf16 for FLUX.1 and fp16 for the others; fp32 on CPU.
        local_files_only: for hub ids, do not try the network. Default: ``HF_HUB_OFFLINE`` decides.
        scheduler: ``"ddim"`` (default, what the UNet editing methods are defined with) or ``"keep"``. SD3 and
            FLUX keep their flow-matching scheduler either way.
        config: for a single checkpoint file, the diffusers folder or hub id whose configuration it follows
            (needed offline: without it diffusers looks the configuration up on the hub).
        cache_dir: the Hugging Face hub cache to read hub ids from (default: the hub client's own).
        offload: diffusers' model CPU offload (``enable_model_cpu_offload``): each model is moved to the GPU
            only while it runs, so FLUX.1 (12B transformer + T5-XXL) fits a 24 GB card. Needs CUDA.

    Raises:
        ModelNotFoundError: nothing loadable at ``model``, with instructions on how to point at a model.
        UnsupportedModelError: the model is of a family editkit cannot edit (one line).
    """
    device = check_device(device) or default_device()
    if scheduler not in ("ddim", "keep"):
        raise ValueError(f"scheduler must be 'ddim' or 'keep', got {scheduler!r}")
    if offload and device.type != "cuda":
        raise ValueError(f"offload=True moves models to a CUDA device while they run; device is {device}")
    if not _is_pipeline(model) and not isinstance(model, str | os.PathLike):
        raise TypeError(
            f"model must be a path, a hub id or a diffusers pipeline, got {type(model).__name__}. " + HOW_TO_POINT
        )
    family = detect_family(model, cache_dir)
    dtype = dtype or default_dtype(device, family)
    if _is_pipeline(model):
        pipe = model
    else:
        pipe = _load_from_path_or_hub(str(model), dtype, local_files_only, config, cache_dir, family)
    family = family_of(pipe)
    if family not in FLOW_FAMILIES and scheduler == "ddim":
        _to_ddim(pipe)
    denoiser = pipe.transformer if family in FLOW_FAMILIES else pipe.unet
    if dtype is None or denoiser.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logging.getLogger(__name__).info("loaded a %s pipeline (%s) on %s in %s", family_name(family),
                                     type(pipe).__name__, device, dtype)
    return pipe


def _load_from_path_or_hub(name: str, dtype, local_files_only, config=None, cache_dir=None, family=None):
    import diffusers

    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix not in (".safetensors", ".ckpt", ".pt", ".bin"):
            raise ModelNotFoundError(f"{path} is not a checkpoint file (.safetensors or .ckpt).")
        try:
            cls = getattr(diffusers, FAMILIES[family or ("sdxl" if _guess_xl_from_file(path) else "sd")][0])
            extra = {} if config is None else {"config": str(config)}
            return cls.from_single_file(str(path), **_dtype_kwarg(dtype), **extra)
        except Exception as e:  # noqa: BLE001 - the loader raises many types; name the file and the cause
            raise ModelNotFoundError(
                f"could not load the checkpoint {path}: {_first_line(e)}\n"
                "Single-file loading needs the model's configuration files in the local hub cache "
                "(or network access). A diffusers folder always works offline."
            ) from e
    if path.is_dir():
        _check_folder(path)
        try:
            return _from_pretrained(str(path), dtype, local_files_only=True, family=family)
        except (OSError, ValueError, SafetensorError, json.JSONDecodeError) as e:
            raise ModelNotFoundError(
                f"could not read the model in {path} (incomplete or corrupt weights?): {_first_line(e)}"
            ) from e
    if name.startswith((".", "/", "~")) or os.sep in name.rstrip("/").split("/", 1)[-1]:
        raise ModelNotFoundError(f"no file or folder at {name!r}.")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return _from_pretrained(name, dtype, local_files_only=local_files_only, cache_dir=cache_dir, family=family)
    except Exception as e:  # noqa: BLE001 - the hub client raises many types; our own words, its type named
        where = f"the Hugging Face hub cache{f' at {cache_dir}' if cache_dir is not None else ''}"
        if local_files_only:
            problem = (f"{name!r} is not in {where}, and downloads are off (offline mode: HF_HUB_OFFLINE=1 or "
                       "local files only). Download it once with network access, or name a local folder.")
        else:
            problem = (f"{name!r} could not be loaded from the Hugging Face hub or {where} "
                       f"({type(e).__name__}). Check the id and your network connection.")
        raise ModelNotFoundError(problem) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_folder(path: Path) -> None:
    """A diffusers folder has model_index.json and one subfolder per component it lists."""
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"{path} is a folder but not a diffusers pipeline (no model_index.json).")
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelNotFoundError(f"{index} is not readable JSON: {_first_line(e)}") from e
    if not isinstance(entries, dict):
        raise ModelNotFoundError(f"{index} is not a diffusers model index (expected a JSON object)")
    missing = [
        key for key, value in entries.items()
        if not key.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None
        and not (path / key).is_dir()
    ]
    if missing:
        raise ModelNotFoundError(
            f"the model folder {path} is incomplete: no {', '.join(f'{m}/' for m in missing)} subfolder "
            "(model_index.json lists it). Copy or download the whole model folder."
        )


def _from_pretrained(name: str, dtype, local_files_only: bool, cache_dir=None, family=None):
    from diffusers import DiffusionPipeline

    extra = {}
    if family in (None, "sd") and _is_sd1_like(name):
        # SD 1.x/2.x: do not load the safety checker (editing is not text-to-image serving).
        extra = dict(safety_checker=None, requires_safety_checker=False)
    if cache_dir is not None:
        extra["cache_dir"] = str(cache_dir)
    return DiffusionPipeline.from_pretrained(name, **_dtype_kwarg(dtype), local_files_only=local_files_only, **extra)


def _dtype_kwarg(dtype) -> dict:
    """Recent diffusers renamed ``torch_dtype`` to ``dtype``; pass whichever this version expects."""
    from diffusers.pipelines import pipeline_utils

    return {"dtype": dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _is_sd1_like(name: str) -> bool:
    """SD 1.x/2.x pipelines take ``safety_checker=None``; SDXL ones reject the keyword."""
    path = Path(name)
    index = path / "model_index.json"
    if index.is_file():
        return json.loads(index.read_text()).get("_class_name") == "StableDiffusionPipeline"
    return "xl" not in name.lower()
