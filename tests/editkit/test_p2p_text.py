"""Word indices, alignment and schedules on real sentences, checked against worked examples."""

from __future__ import annotations

import pytest
import torch

from editkit.p2p import text
from editkit.testing import make_tokenizer

SOURCE = "a cat riding a bicycle"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_word_indices(tok):
    # [SOT, a, cat, riding, a, bicycle, EOT]
    assert text.word_token_indices(SOURCE, "bicycle", tok) == [5]
    assert text.word_token_indices(SOURCE, "a", tok) == [1, 4]  # every occurrence
    assert text.word_token_indices(SOURCE, 2, tok) == [3]  # by word index
    # a word outside the vocabulary is several tokens: all of them, and the words after it shift
    n = len(tok.tokenize("motorcycle"))
    assert n > 1
    prompt = "a motorcycle and a cat"
    assert text.word_token_indices(prompt, "motorcycle", tok) == list(range(2, 2 + n))
    assert text.word_token_indices(prompt, "cat", tok) == [2 + n + 2]
    with pytest.raises(ValueError, match="'dog' is not in the prompt"):
        text.word_token_indices(SOURCE, "dog", tok)


def test_replacement_mapper_word_swap(tok):
    m = text.replacement_mapper(SOURCE, "a cat riding a car", tok, 77)
    torch.testing.assert_close(m, torch.eye(77))  # one token for one token: attention moves in place
    # one token -> several tokens: the source token's attention is spread evenly over them
    n = len(tok.tokenize("motorcycle"))
    m = text.replacement_mapper(SOURCE, "a cat riding a motorcycle", tok, 77)
    torch.testing.assert_close(m[5, 5 : 5 + n], torch.full((n,), 1 / n))
    assert m[5].sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(m[:5, :5], torch.eye(5))
    with pytest.raises(ValueError, match="same number of words"):
        text.replacement_mapper(SOURCE, "a cat riding a red car", tok, 77)


def test_refinement_alignment(tok):
    target = "a watercolor painting of a cat riding a bicycle"
    mapper, alphas = text.refinement_mapper(SOURCE, target, tok, 77)
    # target tokens: SOT a watercolor painting of a cat riding a bicycle EOT
    assert mapper[:11].tolist() == [0, 1, -1, -1, -1, -1, 2, 3, 4, 5, 6]
    assert alphas[:11].tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert alphas[11:].eq(1).all() and mapper[11:].tolist() == list(range(11, 77))
    # identical prompts align onto themselves
    mapper, alphas = text.refinement_mapper(SOURCE, SOURCE, tok, 77)
    assert mapper.tolist() == list(range(77)) and alphas.eq(1).all()


def test_schedules(tok):
    prompts = [SOURCE, "a cat riding a car"]
    # a fraction: steps [0, int(0.8 * 11)) of the num_steps + 1 rows
    a = text.cross_replace_alpha(prompts, 10, 0.8, tok, 77)
    assert a.shape == (11, 1, 1, 1, 77)
    assert a[:, 0, 0, 0, 0].tolist() == [1] * 8 + [0] * 3
    # a window
    a = text.cross_replace_alpha(prompts, 10, (0.2, 0.5), tok, 77)
    assert a[:, 0, 0, 0, 3].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    # a per-word dict with a default
    a = text.cross_replace_alpha(prompts, 10, {"default_": 1.0, "car": 0.2}, tok, 77)
    assert a[:, 0, 0, 0, 5].tolist() == [1, 1] + [0] * 9  # "car" only for the first int(0.2 * 11) = 2 rows
    assert a[:, 0, 0, 0, 3].tolist() == [1] * 11
    # a dict without a default replaces everything else on every step (the original's (0, 1))
    a = text.cross_replace_alpha(prompts, 10, {"car": (0.0, 0.3)}, tok, 77)
    assert a[:, 0, 0, 0, 2].tolist() == [1] * 11 and a[:, 0, 0, 0, 5].sum() == 3
    assert text.step_window(0.4, 50) == (0, 20)
    assert text.step_window((0.2, 0.6), 50) == (10, 30)
    for bad in (1.5, (0.6, 0.2), "half"):
        with pytest.raises(ValueError, match="self_replace_steps"):
            text.step_window(bad, 50)
    with pytest.raises(ValueError, match="'boat'"):
        text.cross_replace_alpha(prompts, 10, {"boat": 0.5}, tok, 77)


def test_equalizer(tok):
    eq = text.equalizer(["a smiling cat riding a bicycle"], {"smiling": 5.0}, tok, 77)
    assert eq.shape == (1, 77) and eq[0, 2] == 5 and eq.sum() == 76 + 5
    with pytest.raises(ValueError, match="'happy' is not in the prompt"):
        text.equalizer([SOURCE], {"happy": 2.0}, tok, 77)
