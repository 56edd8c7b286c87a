"""SegmenterSpec: one value that says how to open a segmenter, validated once, as plain data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.options import SegmenterOptions
from diffcut_edge.runtime.segmenter import Segmenter
from diffcut_edge.runtime.spec import SegmenterSpec
from helpers.toy_encoder import make_toy_model_dir


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_model_dir(tmp_path_factory.mktemp("toy"), resolution=256)


def test_round_trips_through_json(toy):
    spec = SegmenterSpec(
        toy,
        backend="ort-cpu",
        device="cpu",
        threads=1,
        classes=["cat", ["sofa", "couch"]],
        options=SegmenterOptions(tau=0.3, mask_size=(64, 96), pamr_dilations=(1, 2)),
    )
    again = SegmenterSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.classes == ("cat", ("sofa", "couch")) and again.options.mask_size == (64, 96)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backend": "cuda-magic"}, "backend must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"threads": 0}, "threads must be None or a whole number"),
        ({"classes": 5}, "classes must be a string or a list"),
    ],
)
def test_bad_fields_are_one_line_errors(toy, changes, message):
    with pytest.raises(DiffCutError, match=message):
        SegmenterSpec(toy, **changes)
    with pytest.raises(DiffCutError, match="unknown segmenter spec field"):
        SegmenterSpec.from_dict({"model_dir": str(toy), "turbo": True})
    with pytest.raises(DiffCutError, match="tau must be"):
        SegmenterSpec.from_dict({"model_dir": str(toy), "options": {"tau": -1}})


def test_open_is_from_model_dir_and_the_segmenter_says_its_spec(toy):
    frame = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    spec = SegmenterSpec(toy, backend="ort-cpu").replace(tau=0.2, refine=False)
    assert spec.options.tau == 0.2 and not spec.options.refine
    with spec.open() as a, Segmenter.from_model_dir(toy, backend="ort-cpu", tau=0.2, refine=False) as b:
        np.testing.assert_array_equal(a(frame).labels, b(frame).labels)
        assert a.spec == spec == b.spec
        a.update_options(tau=0.4)
        assert a.spec.options.tau == 0.4 and a.spec.model_dir == str(toy)  # the spec follows live changes
