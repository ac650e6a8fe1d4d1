"""Value injection for rectified-flow transformers: the Plug-and-Play counterpart of RF-Solver-Edit and FireFlow.

RF-Solver-Edit (Wang et al. 2024) and FireFlow (ICML 2025) edit a real photo by inverting it with the source
prompt and sampling back with the target prompt; while inverting they record the attention **values** V of
the last single-stream blocks of FLUX.1, and while sampling the first steps they attend with those values
instead of the target pass's own ("feature sharing"). Queries and keys stay the target's, so the target prompt
decides *where* each token looks and the source decides *what* it reads there: layout and identity carry
over, the prompt's change comes through.

On editkit's hook layer this is two controllers sharing a :class:`ValueBank`:

* :class:`RecordValues` during the source pass (the inversion) stores ``V`` of the chosen layers per
  ``(layer, step, substep)``; the step is the index of the **sampling** step that covers the same interval
  of the schedule (RF-Solver keys its features by that interval's start time, ``t_prev`` of the inversion
  step = ``t_curr`` of the sampling step), and ``substep`` tells a second-order solver's midpoint call apart;
* :class:`InjectValues` during the target pass replaces ``V`` of every row by the recorded one.

:class:`ShareValues` does the same within one batch (source prompt as row 0, as :func:`editkit.p2p.generate`
lays rows out): for generated images, no inversion needed.

Which layers and steps (reference code, ``FLUX_Image_Edit``): single-stream blocks with index > 19 of FLUX.1's
38, i.e. the last 18 (:func:`default_value_layers` keeps that fraction of the single-stream stack,
``block >= round(20 / 38 * n)``), the whole joint sequence's V (text and image positions), for the first
``inject`` sampling steps (``--inject``: the published example scripts use 2 to 5 of 25 steps, 3 in the
art example; editkit's default is 3). SD3 has no single-stream blocks and no reference; editkit applies the
same fraction of depth to its joint blocks (our choice, documented as such).
"""

from __future__ import annotations

import torch

from ..hooks import AttentionCall, Controller, LayerInfo
from .attention import LayerFilter

DEFAULT_VALUE_STEPS = 3
_FIRST_INJECTED = 20 / 38  # RF-Solver-Edit: single-stream blocks with id > 19 of 38


def default_value_layers(layers: dict[str, LayerInfo]) -> frozenset[str]:
    """Layer names RF-Solver-Edit injects into, for this model (see the module docstring)."""
    single = [lyr for lyr in layers.values() if lyr.place == "single"]
    pool = single or [lyr for lyr in layers.values() if lyr.place == "joint"]
    first = round(_FIRST_INJECTED * len(pool))
    return frozenset(lyr.name for lyr in pool if lyr.block >= first)


def _names_filter(names) -> LayerFilter:
    names = frozenset(names)

    def accept(layer: LayerInfo) -> bool:
        return layer.name in names

    return accept


def _positions(call: AttentionCall, part: str) -> slice:
    if part == "all":
        return slice(None)
    if part == "image":
        return call.tokens.image
    raise ValueError(f"part must be 'all' or 'image', got {part!r}")


class ValueBank:
    """Recorded values: ``{(layer name, step, substep): V [H, L, d]}`` of one source row."""

    def __init__(self):
        self.values: dict[tuple[str, int, int], torch.Tensor] = {}

    @staticmethod
    def key(call: AttentionCall) -> tuple[str, int, int]:
        return call.layer.name, call.step, call.substep

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, key) -> bool:
        return key in self.values

    def steps(self) -> list[int]:
        return sorted({step for _, step, _ in self.values})


class _ValueController(Controller):
    def __init__(self, layers, window: tuple[int, int], part: str = "all"):
        self.accept = layers if callable(layers) else _names_filter(layers)
        self.window = (int(window[0]), int(window[1]))
        if self.window[0] < 0 or self.window[1] < self.window[0]:
            raise ValueError(f"the injection window must be 0 <= first <= last + 1, got {window!r}")
        if part not in ("all", "image"):
            raise ValueError(f"part must be 'all' or 'image', got {part!r}")
        self.part = part

    def _active(self, call: AttentionCall) -> bool:
        return call.tokens is not None and self.window[0] <= call.step < self.window[1] and self.accept(call.layer)


class RecordValues(_ValueController):
    """Store V of one row (default: the conditional row of prompt 0) of the chosen layers during ``window``."""

    def __init__(self, bank: ValueBank, layers, window: tuple[int, int], part: str = "all", row: int | None = None):
        super().__init__(layers, window, part)
        self.bank = bank
        self.row = row

    def wants_values(self, call: AttentionCall) -> bool:
        return self._active(call)

    def on_values(self, value: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        row = call.layout.cond.start if self.row is None else self.row
        self.bank.values[ValueBank.key(call)] = value[row].detach().clone()
        return value


class InjectValues(_ValueController):
    """Attend with the recorded V (every row) in the chosen layers during ``window``.

    A step of the window with nothing recorded is an error, not a silent no-op: the source pass and the
    target pass must share their step clock.
    """

    def __init__(self, bank: ValueBank, layers, window: tuple[int, int], part: str = "all"):
        super().__init__(layers, window, part)
        self.bank = bank

    def wants_values(self, call: AttentionCall) -> bool:
        return self._active(call)

    def on_values(self, value: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        key = ValueBank.key(call)
        if key not in self.bank:
            raise KeyError(f"no recorded values for {key}: the source pass recorded steps {self.bank.steps()}")
        source = self.bank.values[key].to(value.device, value.dtype)
        if source.shape != value.shape[1:]:
            raise ValueError(f"{call.layer.name}: recorded values {tuple(source.shape)} do not fit {tuple(value.shape[1:])} "
                             "(same image size and text length needed in both passes)")
        pos = _positions(call, self.part)
        value = value.clone()
        value[:, :, pos] = source[None, :, pos]
        return value


class ShareValues(_ValueController):
    """In one batch: the rows of prompts 1.. (both guidance halves) attend with the values of prompt 0's
    conditional row, in the chosen layers during ``window``; prompt 0's own rows are untouched."""

    def wants_values(self, call: AttentionCall) -> bool:
        return self._active(call) and call.layout.num_prompts > 1

    def on_values(self, value: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        layout = call.layout
        src = layout.cond.start
        pos = _positions(call, self.part)
        value = value.clone()
        halves = [layout.cond] if layout.uncond is None else [layout.uncond, layout.cond]
        for rows in halves:
            value[rows.start + 1 : rows.stop, :, pos] = value[src : src + 1, :, pos]
        return value
