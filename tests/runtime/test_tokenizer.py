"""The numpy CLIP tokenizer against open_clip's SimpleTokenizer, token for token."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.tokenizer import ClipTokenizer
from diffcut_edge.runtime.vocabulary import VILD_TEMPLATES, load_vocabulary

TEXTS = [
    "a photo of a cat.",
    "There is a Large  sofa in the scene",
    "café crème brûlée",
    "naïve 123 ½ x² &amp;amp;",
    "baseball-glove's",
    "日本語のテキスト",
    "",
    "  tabs\tand\nnewlines ",
    "<start_of_text>inner",
    "a " * 80,
    "Ünïcödé MIXED case",
    "don't it'll we've",
    "emoji 🙂 and — dashes",
]


@pytest.fixture(scope="module")
def tokenizers(tiny_clip_dir):
    from diffcut_edge.models.clip import bpe_vocabulary_path, import_open_clip

    reference = import_open_clip().get_tokenizer(f"local-dir:{tiny_clip_dir}")
    return reference, ClipTokenizer(bpe_vocabulary_path())


def test_same_tokens_as_open_clip(tokenizers):
    reference, ours = tokenizers
    np.testing.assert_array_equal(ours(TEXTS), reference(TEXTS).numpy())


def test_same_tokens_on_every_voc_prompt(tokenizers):
    reference, ours = tokenizers
    prompts = load_vocabulary("voc").prompts(VILD_TEMPLATES)
    np.testing.assert_array_equal(ours(prompts), reference(prompts).numpy())


def test_truncation_keeps_the_end_token(tokenizers):
    _, ours = tokenizers
    tokens = ours("word " * 200)
    assert tokens.shape == (1, 77) and tokens.dtype == np.int64
    assert tokens[0, 0] == ours.sot and tokens[0, -1] == ours.eot


def test_a_file_that_is_not_the_bpe_vocabulary(tmp_path):
    bad = tmp_path / "bpe.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DiffCutError, match="not CLIP's BPE vocabulary"):
        ClipTokenizer(bad)
    with gzip.open(bad, "wt") as f:
        f.write("header\na b\n")
    with pytest.raises(DiffCutError, match="expected 48894 BPE merges"):
        ClipTokenizer(bad)
