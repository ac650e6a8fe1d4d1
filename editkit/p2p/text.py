"""Word indices, token alignment and schedules of Prompt-to-Prompt (pure functions, no model needed).

These follow google/prompt-to-prompt's ``ptp_utils.py`` and ``seq_aligner.py`` exactly, because published
results were produced with them, with one deliberate difference: a word that is not in the prompt raises a
``ValueError`` naming it (the original silently selects no token, which turns a typo into a no-op edit).

``max_len`` is the text encoder's sequence length (``tokenizer.model_max_length``, 77 for CLIP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch


def word_token_indices(text: str, word: str | int, tokenizer, strict: bool = True) -> list[int]:
    """Token positions (1-based: position 0 is the start token) of a word of ``text``.

    ``word`` is either the word itself (every occurrence is selected) or its index in ``text.split(" ")``.
    Words that the tokenizer splits into several tokens give several positions.
    """
    split_text = text.split(" ")
    if isinstance(word, str):
        places = [i for i, w in enumerate(split_text) if w == word]
        if not places and strict:
            raise ValueError(f"the word {word!r} is not in the prompt {text!r} (words: {split_text})")
    else:
        if not 0 <= int(word) < len(split_text):
            raise ValueError(f"word index {word} is outside the prompt {text!r} ({len(split_text)} words)")
        places = [int(word)]
    out: list[int] = []
    if places:
        pieces = [tokenizer.decode([t]).strip("#") for t in tokenizer.encode(text)][1:-1]
        cur_len, ptr = 0, 0
        for i, piece in enumerate(pieces):
            cur_len += len(piece)
            if ptr in places:
                out.append(i + 1)
            if ptr < len(split_text) and cur_len >= len(split_text[ptr]):
                ptr += 1
                cur_len = 0
    return out


def check_within(text: str, word, indices: Sequence[int], max_len: int) -> list[int]:
    """Refuse a word whose tokens fall beyond the text encoder's ``max_len`` tokens (start token included):
    the encoder truncates them away, so an edit of that word would silently change nothing."""
    if any(i >= max_len - 1 for i in indices):
        raise ValueError(
            f"the word {word!r} of the prompt {text!r} falls after the text encoder's limit of {max_len} tokens "
            f"(its tokens are at positions {list(indices)}, the last usable is {max_len - 2}); shorten the prompt"
        )
    return list(indices)


def replacement_mapper(source: str, target: str, tokenizer, max_len: int) -> torch.Tensor:
    """``[max_len, max_len]`` matrix moving source-token attention to target tokens for a word swap.

    Prompts must have the same number of words; a swapped word that becomes several tokens (or the other
    way round) spreads its attention evenly.
    """
    words_x, words_y = source.split(" "), target.split(" ")
    if len(words_x) != len(words_y):
        raise ValueError(
            "a word swap (Replace) needs prompts with the same number of words, but "
            f"{source!r} has {len(words_x)} words and {target!r} has {len(words_y)}; use Refine for prompts "
            "that add or remove words"
        )
    inds_replace = [i for i in range(len(words_y)) if words_y[i] != words_x[i]]
    inds_source = [check_within(source, words_x[i], word_token_indices(source, i, tokenizer), max_len) for i in inds_replace]
    inds_target = [check_within(target, words_y[i], word_token_indices(target, i, tokenizer), max_len) for i in inds_replace]
    mapper = np.zeros((max_len, max_len))
    i = j = 0
    cur = 0
    while i < max_len and j < max_len:
        if cur < len(inds_source) and inds_source[cur][0] == i:
            src, tgt = inds_source[cur], inds_target[cur]
            if len(src) == len(tgt):
                mapper[src, tgt] = 1
            else:
                for t in tgt:
                    mapper[src, t] = 1 / len(tgt)
            cur += 1
            i += len(src)
            j += len(tgt)
        elif cur < len(inds_source):
            mapper[i, j] = 1
            i += 1
            j += 1
        else:
            mapper[j, j] = 1
            i += 1
            j += 1
    return torch.from_numpy(mapper).float()


# --- Refinement: global (Needleman-Wunsch) alignment of the two token sequences -------------------------
_GAP, _MATCH, _MISMATCH = 0, 1, -1


def _global_align(x: Sequence[int], y: Sequence[int]) -> np.ndarray:
    """Trace-back matrix of the alignment (1: left / gap in x, 2: up / gap in y, 3: diagonal, 4: origin)."""
    score = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    score[0, 1:] = (np.arange(len(y)) + 1) * _GAP
    score[1:, 0] = (np.arange(len(x)) + 1) * _GAP
    trace = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    trace[0, 1:] = 1
    trace[1:, 0] = 2
    trace[0, 0] = 4
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left = score[i, j - 1] + _GAP
            up = score[i - 1, j] + _GAP
            diag = score[i - 1, j - 1] + (_MATCH if x[i - 1] == y[j - 1] else _MISMATCH)
            score[i, j] = max(left, up, diag)
            trace[i, j] = 1 if score[i, j] == left else 2 if score[i, j] == up else 3
    return trace


def _target_to_source(x: Sequence[int], y: Sequence[int], trace: np.ndarray) -> torch.Tensor:
    """For every target token j, the aligned source token i, or -1 when j is new: ``[len(y), 2]`` (j, i)."""
    i, j = len(x), len(y)
    pairs: list[tuple[int, int]] = []
    while i > 0 or j > 0:
        move = trace[i, j]
        if move == 3:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif move == 1:
            j -= 1
            pairs.append((j, -1))
        elif move == 2:
            i -= 1
        else:
            break
    pairs.reverse()
    return torch.tensor(pairs, dtype=torch.int64)


def refinement_mapper(source: str, target: str, tokenizer, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mapper [max_len], alphas [max_len])`` for Refine.

    ``mapper[j]`` is the source token whose attention target token ``j`` takes; ``alphas[j]`` is 0 for
    target tokens with no counterpart in the source (they keep their own attention), else 1.
    """
    x_seq, y_seq = tokenizer.encode(source), tokenizer.encode(target)
    for prompt, seq in ((source, x_seq), (target, y_seq)):
        if len(seq) > max_len:
            raise ValueError(
                f"the prompt {prompt!r} is {len(seq)} tokens, longer than the text encoder's limit of {max_len}: "
                "Refine would align words the encoder never sees; shorten it"
            )
    base = _target_to_source(x_seq, y_seq, _global_align(x_seq, y_seq))
    alphas = torch.ones(max_len)
    alphas[: base.shape[0]] = base[:, 1].ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.int64)
    mapper[: base.shape[0]] = base[:, 1]
    mapper[base.shape[0] :] = len(y_seq) + torch.arange(max_len - len(y_seq))
    return mapper, alphas


# --- Schedules ---------------------------------------------------------------------------------------------
def parse_window(steps, name: str) -> tuple[float, float]:
    """A fraction ``f`` means the window ``(0, f)``; a pair is ``(start, end)``; both in [0, 1]."""
    if isinstance(steps, int | float) and not isinstance(steps, bool):
        window = (0.0, float(steps))
    elif isinstance(steps, Sequence) and len(steps) == 2:
        window = (float(steps[0]), float(steps[1]))
    else:
        raise ValueError(f"{name} must be a fraction in [0, 1] or a (start, end) pair, got {steps!r}")
    if not (0.0 <= window[0] <= window[1] <= 1.0):
        raise ValueError(f"{name} must satisfy 0 <= start <= end <= 1, got {window}")
    return window


def step_window(steps, num_steps: int, name: str = "self_replace_steps") -> tuple[int, int]:
    """``(first, last + 1)`` step indices of a window, with the original's ``int(num_steps * fraction)``."""
    start, end = parse_window(steps, name)
    return int(num_steps * start), int(num_steps * end)


def cross_replace_alpha(
    prompts: Sequence[str], num_steps: int, cross_replace_steps, tokenizer, max_len: int
) -> torch.Tensor:
    """``[num_steps + 1, P - 1, 1, 1, max_len]``: 1 where target ``p``'s token takes the source attention.

    ``cross_replace_steps`` is a fraction, a ``(start, end)`` window, or a dict mapping words to either,
    with the key ``"default_"`` for all other tokens (default ``(0, 1)`` when the dict has none).
    """
    if not isinstance(cross_replace_steps, Mapping):
        cross_replace_steps = {"default_": cross_replace_steps}
    cross_replace_steps = dict(cross_replace_steps)
    cross_replace_steps.setdefault("default_", (0.0, 1.0))
    alpha = torch.zeros(num_steps + 1, len(prompts) - 1, max_len)

    def fill(window, prompt_index, token_indices=None):
        start, end = parse_window(window, "cross_replace_steps")
        start, end = int(start * alpha.shape[0]), int(end * alpha.shape[0])
        cols = slice(None) if token_indices is None else token_indices
        alpha[:start, prompt_index, cols] = 0
        alpha[start:end, prompt_index, cols] = 1
        alpha[end:, prompt_index, cols] = 0

    for p in range(len(prompts) - 1):
        fill(cross_replace_steps["default_"], p)
    for word, window in cross_replace_steps.items():
        if word == "default_":
            continue
        found = False
        for p in range(1, len(prompts)):
            inds = check_within(prompts[p], word, word_token_indices(prompts[p], word, tokenizer, strict=False), max_len)
            if inds:
                found = True
                fill(window, p - 1, inds)
        if not found:
            raise ValueError(f"cross_replace_steps names the word {word!r}, which is in none of the target prompts {list(prompts[1:])}")
    return alpha.reshape(num_steps + 1, len(prompts) - 1, 1, 1, max_len)


def equalizer(prompts: Sequence[str], weights: Mapping[str | int, float], tokenizer, max_len: int) -> torch.Tensor:
    """``[len(prompts), max_len]`` attention scale per token: the weights of the named words, 1 elsewhere."""
    if not weights:
        raise ValueError("Reweight needs at least one word and its weight, e.g. weights={'smiling': 2.0}")
    for word, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ValueError(f"the weight of {word!r} must be a finite number, got {value!r}")
    eq = torch.ones(len(prompts), max_len)
    for row, prompt in enumerate(prompts):
        for word, value in weights.items():
            eq[row, check_within(prompt, word, word_token_indices(prompt, word, tokenizer), max_len)] = float(value)
    return eq
