"""The CLIP loader: a tiny random ConvNeXt CLIP written in open_clip's local-dir layout loads through
open_clip itself (the path a real CLIP takes), and the torchvision stand-in leaves nothing behind."""

from __future__ import annotations

import sys

import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.models import clip as mclip


def test_tiny_clip_loads_through_open_clip_with_its_weights(tiny_clip_dir):
    import torch
    from safetensors.torch import load_file

    model = mclip.load_clip(f"local-dir:{tiny_clip_dir}")
    saved = load_file(str(tiny_clip_dir / mclip.WEIGHTS_NAME))
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)  # the weights, not a fresh init
    trunk = model.visual.trunk
    dense = trunk.norm_pre(trunk.stages(trunk.stem(torch.rand(1, 3, 96, 64))))
    assert tuple(dense.shape) == (1, trunk.num_features, 3, 2)  # stride 32, any H, W
    assert float(model.logit_scale.detach().exp()) == pytest.approx(50.0, rel=1e-5)


def test_open_clip_imports_and_no_stand_in_stays(tiny_clip_dir):
    open_clip = mclip.import_open_clip()
    assert hasattr(open_clip, "create_model")
    stand_in = [
        m
        for m in sys.modules
        if m.split(".")[0] == "torchvision" and getattr(sys.modules[m], "__version__", "").endswith("stand-in")
    ]
    assert stand_in == []  # transformers and diffusers in this process see no fake torchvision


def test_stand_in_satisfies_imports_and_refuses_use():
    with mclip.torchvision_stand_in():
        import torchvision.transforms.functional as F  # noqa: F401
        from torchvision.transforms import InterpolationMode, Normalize  # noqa: F401

        assert InterpolationMode.BICUBIC is not None
        with pytest.raises(DiffCutError, match="stand-in"):
            Normalize((0.5,), (0.5,))
    assert "torchvision.transforms" not in sys.modules


@pytest.mark.parametrize(
    "spec, message",
    [
        ("convnext_large_d_320", "expected MODEL:TAG"),
        ("a:b:c", "expected MODEL:TAG"),
        ("local-dir:/nonexistent/clip", "has no open_clip_config.json"),
    ],
)
def test_clip_spec_errors(spec, message):
    with pytest.raises(DiffCutError, match=message):
        mclip.parse_clip_spec(spec)
