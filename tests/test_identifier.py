import pytest
from transformers import CLIPTokenizer

from dreambooth.identifier import KNOWN_PRIORS, check_identifier, common_words, find_identifiers
from dreambooth.models import CLIP_TOKENIZER_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def candidates(tokenizer):
    return find_identifiers(tokenizer, top_k=200)


def test_every_candidate_is_a_rare_meaningless_single_token(tokenizer, candidates):
    assert len(candidates) == 200
    for c in candidates:
        assert 1 <= len(c.text) <= 3 and c.text.isascii() and c.text.isalpha() and c.text.islower()
        assert c.text not in common_words() and c.text not in KNOWN_PRIORS
        assert tokenizer.tokenize(c.text) == [c.text + "</w>"]
        assert tokenizer(f"a {c.text} dog", add_special_tokens=False).input_ids == [320, c.token_id, 1929]
        assert check_identifier(tokenizer, c.text) == []


def test_ranked_rarest_first_and_deterministic(tokenizer, candidates):
    assert [c.rank for c in candidates] == list(range(1, 201))
    ids = [c.token_id for c in candidates]
    assert ids == sorted(ids, reverse=True)
    assert ids[0] > 49000  # from the rare end of CLIP's 49,408 tokens
    assert find_identifiers(tokenizer, top_k=200) == candidates
    assert find_identifiers(tokenizer, top_k=5) == candidates[:5]


def test_excludes_sks_and_common_words(tokenizer):
    texts = {c.text for c in find_identifiers(tokenizer, top_k=100_000)}
    assert "sks" not in texts and "hmv" not in texts
    assert not texts & {"dog", "cat", "the", "lol", "usa", "tom"}


def test_max_chars(tokenizer):
    assert all(len(c.text) <= 2 for c in find_identifiers(tokenizer, top_k=20, max_chars=2))


def test_every_tokenizer_must_agree(tokenizer, candidates):
    assert find_identifiers([tokenizer, tokenizer], top_k=10) == candidates[:10]


def test_check_identifier_warnings(tokenizer):
    [common] = check_identifier(tokenizer, "dog")
    assert "common word" in common
    [split] = check_identifier(tokenizer, "xqzvbw")
    assert "splits into" in split
    assert "rifle" in check_identifier(tokenizer, "sks")[0]


def test_a_frequent_single_token_is_warned_about():
    """One token is not enough: 'horse' and 'photo' are single tokens the model knows well."""
    from transformers import CLIPTokenizer

    from dreambooth.identifier import check_identifier
    from dreambooth.models import CLIP_TOKENIZER_DIR

    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    for word in ("horse", "photo", "ak"):
        assert any("is a frequent token" in w for w in check_identifier(tokenizer, word)), word
    assert check_identifier(tokenizer, "lun") == []  # the rarest, as `dreambooth identifier` lists it
