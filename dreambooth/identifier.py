"""Rare-token identifiers [V] for DreamBooth (Ruiz et al., CVPR 2023, Sec. 3.2).

The paper binds the subject to an identifier with a weak prior: "we find relatively rare tokens in
the vocabulary, then invert them into text space", keeping tokens of at most 3 characters. A random
letter string is worse (it splits into common letter tokens), and so is the popular "sks" (a rifle,
and the identifier of countless community checkpoints).

In CLIP's BPE vocabulary a token's id is 512 + its merge rank, and merges are learned most frequent
first, so a higher id is a rarer token. We take ids from the very end: CLIP keeps only the first
48,894 of the 262k merges in its merge list, so the junk tail of a BPE list (pairs merged from a
handful of occurrences) was already cut off. The last kept tokens are ordinary words, names and
acronyms ("jekyll", "serendipity", "lun", "hta"), every one seen often enough in training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from transformers import PreTrainedTokenizerBase

COMMON_WORDS_FILE = Path(__file__).parent / "assets" / "common-short-words.txt"
WORD_END = "</w>"  # CLIP's BPE marks a token that ends a word
KNOWN_PRIORS = {
    "sks": "a rifle (SKS), and the identifier of countless published DreamBooth checkpoints",
    "dbz": "Dragon Ball Z",
    "hmv": "the record shop whose logo is a dog, Nipper",
    "smg": "a submachine gun",
}

Tokenizers = PreTrainedTokenizerBase | Sequence[PreTrainedTokenizerBase]


@dataclass(frozen=True)
class Candidate:
    """An identifier: `text` is one token (`token_id` in the first tokenizer); rank 1 is the rarest."""

    text: str
    token_id: int
    rank: int


@lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    """Short strings with a meaning of their own (words, abbreviations, names), from the asset list."""
    lines = COMMON_WORDS_FILE.read_text().splitlines()
    return frozenset(word for line in lines for word in line.split("#", 1)[0].split())


def find_identifiers(tokenizers: Tokenizers, top_k: int = 10, max_chars: int = 3) -> list[Candidate]:
    """The `top_k` rarest word tokens of 1..max_chars lowercase letters with no known meaning.

    With several tokenizers (SDXL has two), a candidate must be a single token in every one;
    the first tokenizer's ids decide the ranking.
    """
    tokenizers = _as_list(tokenizers)
    word = re.compile(rf"([a-z]{{1,{max_chars}}}){re.escape(WORD_END)}")
    vocab = sorted(((i, t) for t, i in tokenizers[0].get_vocab().items()), reverse=True)  # rarest first
    found: list[Candidate] = []
    for token_id, token in vocab:
        match = word.fullmatch(token)
        if match is None or _meaning(match[1]) is not None:
            continue
        if _single_token_id(tokenizers[0], match[1]) != token_id:
            continue  # unreachable: BPE builds this string some other way
        if all(_single_token_id(t, match[1]) is not None for t in tokenizers[1:]):
            found.append(Candidate(match[1], token_id, rank=len(found) + 1))
            if len(found) == top_k:
                break
    return found


def check_identifier(tokenizers: Tokenizers, text: str) -> list[str]:
    """Why `text` may be a poor identifier (empty if it looks fine)."""
    warnings = []
    for tokenizer in _as_list(tokenizers):
        pieces = [p.removesuffix(WORD_END) for p in tokenizer.tokenize(text)]
        if len(pieces) > 1:
            warnings.append(f"splits into {len(pieces)} tokens ({' '.join(pieces)}), each with its own prior; "
                            "use a single rare token, e.g. from `dreambooth identifier`")
            break
    meaning = _meaning(text.strip().lower())
    if meaning is not None:
        warnings.append(f"is {meaning}, so the model already has a prior for it; prefer a rare token")
    elif not warnings:
        first = _as_list(tokenizers)[0]
        token_id = _single_token_id(first, text.strip().lower())
        if token_id is not None and token_id < len(first) // 2:  # a BPE id is its merge rank: low is frequent
            warnings.append(f"is a frequent token (id {token_id} of {len(first)}), so the model already has a prior "
                            "for it; prefer a rare token, e.g. from `dreambooth identifier`")
    return warnings


def _as_list(tokenizers: Tokenizers) -> list[PreTrainedTokenizerBase]:
    return [tokenizers] if isinstance(tokenizers, PreTrainedTokenizerBase) else list(tokenizers)


def _meaning(text: str) -> str | None:
    """What `text` already means to the model, if we know."""
    if text in KNOWN_PRIORS:
        return f"a token with a known prior ({KNOWN_PRIORS[text]})"
    if text in common_words():
        return "a common word, abbreviation or name"
    return None


def _single_token_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    """The id of `text` if, inside a prompt, it is exactly one token between its neighbours."""
    context = tokenizer("a dog", add_special_tokens=False).input_ids
    ids = tokenizer(f"a {text} dog", add_special_tokens=False).input_ids
    if len(ids) != len(context) + 1 or ids[:1] + ids[2:] != context:
        return None
    return ids[1]
