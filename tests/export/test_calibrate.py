"""export/calibrate.py: onnxruntime's ranges, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diffcut_edge.errors import DiffCutError  # noqa: E402
from diffcut_edge.export.calibrate import RangeCollector, budget_groups, calibration_tensors  # noqa: E402

CHAIN = textwrap.dedent(
    """
    import numpy as np, onnx
    from onnx import TensorProto, helper, numpy_helper

    def make_chain(path, layers, channels, size, seed=0):
        '''Conv -> Tanh, ``layers`` times, then a MatMul: every activation is (1, C, size, size).'''
        rng = np.random.default_rng(seed)
        nodes, weights, prev = [], [], "x"
        for i in range(layers):
            w = rng.normal(0, 0.4, (channels, channels if i else 3, 3, 3)).astype(np.float32)
            weights.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
            nodes.append(helper.make_node("Tanh", [f"c{i}"], [f"t{i}"], name=f"tanh{i}"))
            prev = f"t{i}"
        weights.append(numpy_helper.from_array(rng.normal(size=(size, 4)).astype(np.float32), "m"))
        nodes.append(helper.make_node("MatMul", [prev, "m"], ["y"], name="matmul"))
        graph = helper.make_graph(
            nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, 4])], weights)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    def feeds(count=2, size=None):
        return lambda: ({"x": np.random.default_rng(i).normal(size=(1, 3, size, size)).astype(np.float32)}
                        for i in range(count))
    """
)
namespace: dict = {}
exec(CHAIN, namespace)  # the same graph in this process and in the memory-measuring one
make_chain, feeds = namespace["make_chain"], namespace["feeds"]


def _onnxruntime_ranges(
    path: Path, method: str, size: int, images: list[int] | None = None
) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        path,
        ["Conv", "MatMul"],
        augmented_model_path=str(path.with_name("augmented.onnx")),
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
    )
    every = list(feeds(max(images) + 1 if images else 3, size)())
    batches = iter([every[i] for i in images] if images else every)

    class Reader:
        def get_next(self):
            return next(batches, None)

    calibrator.collect_data(Reader())
    return _plain(calibrator.compute_data())


def _plain(tensors_data) -> dict[str, tuple[float, float]]:
    return {k: tuple(float(np.ravel(v)[0]) for v in d.range_value) for k, d in tensors_data.items()}


def test_minmax_ranges_are_onnxruntimes_for_the_same_tensors(tmp_path, capsys):
    path = tmp_path / "chain.onnx"
    make_chain(str(path), layers=3, channels=4, size=16)
    ours = _plain(RangeCollector(path, ["Conv", "MatMul"]).collect(feeds(3, 16)))
    theirs = _onnxruntime_ranges(path, "minmax", 16)
    assert sorted(ours) == sorted(theirs) == sorted({"x", "c0", "t0", "c1", "t1", "c2", "t2", "y"})
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["augmented.onnx", "chain.onnx"]  # nothing of ours left


def test_smoothed_ranges_are_quantiles_of_each_images_own_extremes(tmp_path, capsys):
    # Each image alone through onnxruntime's own min/max calibrator gives its extremes; the smoothed
    # range runs from the (1 - q) quantile of the minima to the q quantile of the maxima.
    from diffcut_edge.export.calibrate import SMOOTHED_QUANTILE

    path = tmp_path / "chain.onnx"
    make_chain(str(path), layers=3, channels=4, size=16)
    collector = RangeCollector(path, ["Conv", "MatMul"], "smoothed")
    assert collector.passes == 1
    ours = _plain(collector.collect(feeds(5, 16)))
    per_image = [_onnxruntime_ranges(path, "minmax", 16, images=[i]) for i in range(5)]
    q = SMOOTHED_QUANTILE
    for name in ours:
        lows, highs = [r[name][0] for r in per_image], [r[name][1] for r in per_image]
        np.testing.assert_allclose(ours[name], (np.quantile(lows, 1 - q), np.quantile(highs, q)), rtol=1e-6)
        whole = (min(lows), max(highs))
        assert whole[0] <= ours[name][0] <= ours[name][1] <= whole[1]  # inside the extremes, never wider
    assert any(ours[n][1] < max(r[n][1] for r in per_image) for n in ours)  # and narrower somewhere
    one = _plain(RangeCollector(path, ["Conv", "MatMul"], "smoothed").collect(feeds(1, 16)))
    assert one == _plain(RangeCollector(path, ["Conv", "MatMul"]).collect(feeds(1, 16)))  # one image: minmax


def test_percentile_in_groups_is_close_to_onnxruntimes_in_one_pass(tmp_path, capsys):
    path = tmp_path / "chain.onnx"
    make_chain(str(path), layers=3, channels=4, size=16)
    collector = RangeCollector(path, ["Conv", "MatMul"], "percentile", budget_bytes=2 * 4 * 16 * 16 * 4)
    assert collector.passes >= 4  # two (1, 4, 16, 16) activations a pass
    ticks = []
    ours = _plain(collector.collect(feeds(3, 16), on_image=lambda: ticks.append(1)))
    assert len(ticks) == collector.passes * 3
    theirs = _onnxruntime_ranges(path, "percentile", 16)
    assert sorted(ours) == sorted(theirs)
    for name in ours:  # histograms merged image by image re-bin: equal up to a bin or so
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0.02, atol=1e-3)


def test_budget_groups_keep_order_and_never_leave_a_tensor_out():
    from diffcut_edge.export.calibrate import CalibrationTensor

    tensors = [CalibrationTensor(str(i), n) for i, n in enumerate([5, 5, 20, 1, 1, 9])]
    groups = budget_groups(tensors, 10)
    assert [[t.name for t in g] for g in groups] == [["0", "1"], ["2"], ["3", "4"], ["5"]]


def test_calibration_tensors_skip_weights_and_non_float(tmp_path):
    path = tmp_path / "chain.onnx"
    make_chain(str(path), layers=2, channels=4, size=8)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    tensors = calibration_tensors(model, ["Conv"])
    assert [t.name for t in tensors] == ["x", "c0", "t0", "c1"]  # not w0/w1, not the MatMul's
    assert tensors[1].nbytes == 4 * 8 * 8 * 4


def test_a_graph_without_the_op_types_is_refused(tmp_path):
    path = tmp_path / "chain.onnx"
    make_chain(str(path), layers=1, channels=2, size=4)
    with pytest.raises(DiffCutError, match="no Gemm node"):
        RangeCollector(path, ["Gemm"])


MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    {chain}
    def peak_mb():
        return next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))

    which, path = sys.argv[1], Path(sys.argv[2])
    make_chain(str(path), layers=48, channels=16, size=192)
    import onnxruntime
    from diffcut_edge.export.calibrate import RangeCollector
    before = peak_mb()
    if which == "ours":
        RangeCollector(path, ["Conv"]).collect(feeds(2, 192))
    elif which == "ours-percentile":
        RangeCollector(path, ["Conv"], "percentile", budget_bytes=8 << 20).collect(feeds(2, 192))
    else:
        from onnxruntime.quantization.calibrate import create_calibrator
        calibrator = create_calibrator(path, ["Conv"], augmented_model_path=str(path.with_name("aug.onnx")))
        batches = feeds(2, 192)()
        class Reader:
            def get_next(self):
                return next(batches, None)
        calibrator.collect_data(Reader())
    print(json.dumps({{"growth_mb": peak_mb() - before}}))
    """
)


def _growth_mb(which: str, tmp_path: Path) -> int:
    script = tmp_path / "measure.py"
    script.write_text(MEASURE.format(chain=CHAIN))
    done = subprocess.run(
        [sys.executable, str(script), which, str(tmp_path / f"{which}.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_mb"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_calibration_memory_stays_bounded_where_all_activations_would_not_fit(tmp_path):
    # 96 activations of (1, 16, 192, 192) float32: 216 MB an image in all, 2.25 MB each.
    total_mb = 96 * 16 * 192 * 192 * 4 / 2**20
    limit_mb = total_mb / 2
    assert _growth_mb("onnxruntime", tmp_path) > limit_mb  # the graph does not fit the limit the usual way
    assert _growth_mb("ours", tmp_path) < limit_mb  # min/max: a tensor is freed once reduced
    assert _growth_mb("ours-percentile", tmp_path) < limit_mb  # histograms: 8 MB of outputs a pass
