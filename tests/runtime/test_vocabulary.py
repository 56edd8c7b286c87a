"""Vocabularies (built-in, files, run-time lists) and the scoring of segments against a text bank."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import vocabulary as v


@pytest.mark.parametrize(
    "name, classes, first",
    [("voc", 21, "background"), ("context", 60, "background"), ("coco-object", 81, "background")],
)
def test_builtin_vocabularies(name, classes, first):
    vocab = v.load_vocabulary(name)
    assert len(vocab) == classes and vocab.class_names[0] == first
    assert all(all(s for s in c) for c in vocab.classes)


def test_voc_is_the_official_list():
    vocab = v.load_vocabulary("voc")
    assert vocab.classes[1] == ("aeroplane", "airplane", "aeroplanes", "airplanes")
    assert vocab.class_names[15] == "person" and len(vocab.classes[0]) > 60  # background's stuff synonyms


def test_file_format_synonyms_comments_and_utf8(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my classes\ncat, kitty\n\nsofa,couch , settee\nfenêtre\n", encoding="utf-8")
    vocab = v.load_vocabulary(path)
    assert vocab.classes == (("cat", "kitty"), ("sofa", "couch", "settee"), ("fenêtre",))
    assert vocab.synonym_counts == (2, 3, 1) and vocab.name == "mine.txt"
    assert vocab.prompts(("a {}.", "the {}"))[:3] == ["a cat.", "the cat", "a kitty."]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"cat\n,sofa\n", "class 2 has an empty name"),
        (b"cat\nsofa\nCat\n", "class 3 \\('Cat'\\) repeats class 1"),
        (b"\xff\xfecat\x00", "not UTF-8 text"),
        (b"cat\x00dog\n", "NUL bytes"),
        (b"# only a comment\n\n", "no class names"),
    ],
)
def test_bad_vocabulary_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DiffCutError, match=message):
        v.load_vocabulary(path)


def test_run_time_names():
    assert v.vocabulary_from_names("cat, sofa , window").class_names == ("cat", "sofa", "window")
    typed = v.vocabulary_from_names("cat, sofa|couch , window")  # --classes: synonyms joined by |
    assert typed.classes == (("cat",), ("sofa", "couch"), ("window",)) and typed.class_names[1] == "sofa"
    assert v.vocabulary_from_names(["cat", ["sofa", "couch"]]).classes == (("cat",), ("sofa", "couch"))
    for bad, message in (("", "empty name"), ("cat, cat", "repeats"), ([], "no class names"), ([3], "strings")):
        with pytest.raises(DiffCutError, match=message):
            v.vocabulary_from_names(bad)
    with pytest.raises(DiffCutError, match="not one of voc"):
        v.load_vocabulary("no-such-vocabulary")


def _brute_force_logits(x, bank, counts, scale):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    logits = scale * x @ bank.T
    out, start = [], 0
    for c in counts:
        out.append(logits[:, start : start + c].max(axis=1))
        start += c
    return np.stack(out, axis=1)


def test_class_logits_is_the_max_over_synonyms(ns):
    rng = np.random.default_rng(0)
    counts = [1, 4, 2, 7, 1, 3]
    bank = rng.standard_normal((sum(counts), 16)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    got = ns.get(v.class_logits(ns.put(x), ns.put(bank), counts, 37.5))
    np.testing.assert_allclose(got, _brute_force_logits(x, bank, counts, 37.5), rtol=1e-5, atol=1e-5)
    probs = ns.get(v.softmax(ns.put(got)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_average_over_templates(ns):
    rng = np.random.default_rng(1)
    prompts = rng.standard_normal((3 * 4, 8)).astype(np.float32)
    got = ns.get(v.average_over_templates(ns.put(prompts), 4))
    unit = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)
    mean = unit.reshape(3, 4, 8).mean(axis=1)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_ten_thousand_classes_score_in_bounded_memory():
    """100 segments x 10 000 classes, one class with 70 synonyms: memory stays a few (N, K) arrays,
    not (N, K, max synonyms)."""
    rng = np.random.default_rng(2)
    counts = [1] * 9999 + [70]
    bank = rng.standard_normal((sum(counts), 32)).astype(np.float32)
    x = rng.standard_normal((100, 32)).astype(np.float32)
    tracemalloc.start()
    logits = v.class_logits(x, bank, counts, 100.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert logits.shape == (100, 10000)
    np.testing.assert_allclose(logits[:, -1], _brute_force_logits(x, bank[-70:], [70], 100.0)[:, 0], rtol=1e-5)
    assert peak < 40 * 100 * 10069 * 4  # ~40 (N, S) float32 arrays at most; (N, K, 70) would be 280 MB


def test_text_bank_round_trip(tmp_path):
    vocab = v.vocabulary_from_names(["cat", ["sofa", "couch"]])
    bank = v.TextBank(vocab, np.eye(3, 4, dtype=np.float32), 42.0, "vild", "abc")
    path = tmp_path / "bank.npz"
    path.write_bytes(bank.to_bytes())
    back = v.TextBank.from_file(path)
    assert back.vocabulary == vocab and back.logit_scale == 42.0 and back.clip_id == "abc"
    np.testing.assert_array_equal(back.embeddings, bank.embeddings)
    with pytest.raises(DiffCutError, match="2 embeddings for 3 synonyms"):
        v.TextBank(vocab, np.eye(2, 4, dtype=np.float32), 42.0, "vild", "abc")
    path.write_bytes(b"junk")
    with pytest.raises(DiffCutError, match="not a text bank"):
        v.TextBank.from_file(path)
