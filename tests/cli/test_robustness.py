"""Issue 5: every broken input gives one line on stderr and a non-zero exit (or a warning and the
batch goes on), and outputs already written stay intact.

Image cases run the CLI with the cli_fake_segmenter segmenter (fast); model-folder cases run the real
``Segmenter.from_model_dir`` on hand-made folders (no export needed). Damaged videos
(ending early, broken frame) are in test_cli_video.py.
"""

from __future__ import annotations

import resource

import cv2
import numpy as np
import pytest

from diffcut_edge import cli
from diffcut_edge.apps import pipeline
from diffcut_edge.runtime.manifest import EngineRecord, Manifest, sha256_file, write_manifest
from helpers.fake_segmenter import export_available, run_cli
from helpers.video import run_fresh_process


@pytest.fixture
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.astronaut(), (40, 32))[..., ::-1])


def _write_cases(folder, photo) -> None:
    """Good images in every flavour, broken ones, and a non-image."""
    folder.mkdir()
    cv2.imwrite(str(folder / "good.jpg"), photo)
    cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "rgba.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "deep.png"), photo.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "one.png"), photo[:1, :1])
    (folder / "zero.png").write_bytes(b"")
    jpg = cv2.imencode(".jpg", photo)[1].tobytes()
    (folder / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 999, np.uint8).tobytes())
    (folder / "README.txt").write_text("not an image")


def test_folder_with_broken_and_non_images_warns_and_processes_the_rest(cli_fake_segmenter, photo, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _write_cases(src, photo)
    out.mkdir()
    (out / "zero_labels.png").write_bytes(b"an earlier good result")
    code = cli.main(["segment", str(src), "--model-dir", "m", "--out", str(out), "-q"])
    stdout, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2
    assert lines[0] == (
        "diffcut-edge segment: warning: skipped 1 file(s) that are not images or are outputs: README.txt"
    )
    assert sum(line.startswith("diffcut-edge segment: warning:") for line in lines) == 4  # 1 non-image + 3 broken
    assert any("zero.png: the file is empty" in line for line in lines)
    assert any("cut.jpg: the file is truncated" in line for line in lines)
    assert any("noise.png: not an image" in line for line in lines)
    assert lines[-1] == "diffcut-edge segment: error: 3 of 8 image(s) failed (see the warnings above)"
    assert stdout.startswith("segmented 5 image(s)")
    for stem in ("good", "gray", "rgba", "deep", "one"):
        labels = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and labels.shape == ((1, 1) if stem == "one" else (32, 40))
    assert (out / "zero_labels.png").read_bytes() == b"an earlier good result"
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("name", ["zero.png", "cut.jpg", "noise.png", "missing.png"])
def test_a_single_broken_image_is_one_error_line(cli_fake_segmenter, photo, tmp_path, capsys, name):
    src = tmp_path / "in"
    _write_cases(src, photo)
    code = cli.main(["segment", str(src / name), "--model-dir", "m", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("diffcut-edge segment: error:")


@pytest.mark.slow
def test_a_10000_pixel_square_image_does_not_blow_memory(tmp_path):
    big = tmp_path / "big.bmp"  # uncompressed: fast to write, and the decoder holds no compressed copy
    image = np.zeros((10000, 10000, 3), np.uint8)
    image[:5000] = (40, 80, 120)
    image[:, :3000, 1] = 200
    assert cv2.imwrite(str(big), image)
    del image
    proc = run_fresh_process(
        ["segment", str(big), "--model-dir", "m", "--out", str(tmp_path / "o"), "--overlay-format", "none", "-q"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB on Linux
    # Frame 0.3 GB + int32 labels 0.4 GB + their uint16 copy 0.2 GB: about 1 GB with no stray copies.
    assert peak_gb < 2.0, f"peak RSS {peak_gb:.2f} GB"
    labels = cv2.imread(str(tmp_path / "o" / "big_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (10000, 10000) and len(np.unique(labels[::100, ::100])) > 1


# ------------------------------------------------------------------ model folders (real Segmenter)
@pytest.fixture
def model_dir(tmp_path):
    """A hand-made model folder whose manifest matches its (dummy) ONNX file."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "encoder.onnx").write_bytes(b"\x08\x07" + bytes(200))
    write_manifest(
        folder,
        Manifest(
            model_id="tiny",
            family="sdxl",
            resolution=256,
            grid=(8, 8),
            channels=64,
            precision="fp32",
            timestep=50,
            noise_seed=42,
            opset=18,
            files_sha256={"encoder.onnx": sha256_file(folder / "encoder.onnx")},
        ),
    )
    return folder


def _segment_with_model(folder, tmp_path, capsys, *extra):
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.full((16, 16, 3), 128, np.uint8))
    code = cli.main(["segment", str(image), "--model-dir", str(folder), "--out", str(tmp_path / "out"), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-folder", "does not exist"),
        ("no-manifest", "has no manifest.json"),
        ("missing-onnx", "is missing"),
        ("tampered-onnx", "does not match its manifest"),
        ("newer-format", "newer than this diffcut-edge understands"),
        ("not-onnx", "could not load"),
    ],
)
def test_broken_model_folders_are_one_line_errors(model_dir, tmp_path, capsys, case, message):
    import json

    target = model_dir
    if case == "no-folder":
        target = tmp_path / "nowhere"
    elif case == "no-manifest":
        (model_dir / "manifest.json").unlink()
    elif case == "missing-onnx":
        (model_dir / "encoder.onnx").unlink()
    elif case == "tampered-onnx":
        with open(model_dir / "encoder.onnx", "ab") as f:
            f.write(b"!")
    elif case == "newer-format":
        data = json.loads((model_dir / "manifest.json").read_text())
        data["format_version"] += 1
        (model_dir / "manifest.json").write_text(json.dumps(data))
    code, err = _segment_with_model(target, tmp_path, capsys, "--backend", "ort-cpu")
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_engine_that_is_not_an_engine_without_tensorrt(model_dir, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; this case checks the message without it")
    (model_dir / "encoder.h100.trt10.plan").write_bytes(b"this is not a serialized engine")
    from diffcut_edge.runtime.manifest import read_manifest

    manifest = read_manifest(model_dir)
    manifest.engines.append(
        EngineRecord(
            file="encoder.h100.trt10.plan",
            gpu_name="NVIDIA H100 80GB HBM3",
            compute_capability="9.0",
            tensorrt_version="10.3.0",
            batch_profile=(1, 1, 4),
        )
    )
    write_manifest(model_dir, manifest)
    code, err = _segment_with_model(model_dir, tmp_path, capsys, "--backend", "tensorrt")
    assert code == 2 and err.count("\n") == 1 and "pip install 'diffcut-edge[trt]'" in err, err


@pytest.mark.slow
@pytest.mark.skipif(not export_available(), reason="export stage not available (needs the [export] extra)")
def test_real_segmenter_on_gray_rgba_16bit_and_one_pixel_images(tiny_model_dir, photo, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _write_cases(src, photo)
    files = [str(src / n) for n in ("gray.png", "rgba.png", "deep.png", "one.png")]
    code = cli.main(
        [
            "segment",
            *files,
            "--model-dir",
            str(tiny_model_dir("sdxl", 256)),
            "--out",
            str(out),
            "--backend",
            "ort-cpu",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert cv2.imread(str(out / "one_labels.png"), cv2.IMREAD_UNCHANGED).shape == (1, 1)
    assert cv2.imread(str(out / "deep_labels.png"), cv2.IMREAD_UNCHANGED).shape == (32, 40)


# ------------------------------------------------- issue 9: each class of fault, one line, nothing partial
def _tree(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def _exif_photo(path, photo: np.ndarray, orientation: int) -> None:
    from PIL import Image

    image = Image.fromarray(photo[..., ::-1])
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


def test_phone_photo_with_exif_rotation_is_segmented_upright(cli_fake_segmenter, photo, tmp_path, capsys):
    _exif_photo(tmp_path / "phone.jpg", photo, 6)  # stored landscape, shown portrait
    code, _, err = run_cli(
        ["segment", str(tmp_path / "phone.jpg"), "--model-dir", "m", "--out", str(tmp_path / "out"), "-q"], capsys
    )
    assert code == 0, err
    labels = cv2.imread(str(tmp_path / "out" / "phone_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == photo.shape[1::-1] == cv2.imread(str(tmp_path / "phone.jpg")).shape[:2]


def test_unwritable_out_is_refused_before_the_model_opens(monkeypatch, photo, tmp_path, capsys):
    opened = []
    monkeypatch.setattr(pipeline, "open_segmenter", lambda spec, **kwargs: opened.append(spec))
    cv2.imwrite(str(tmp_path / "a.png"), photo)
    (tmp_path / "file").write_text("x")
    for out, message in [
        (tmp_path / "file" / "sub", "cannot be created: "),
        ("/sys/diffcut-out", "(permission denied)"),
    ]:
        code, _, err = run_cli(["segment", str(tmp_path / "a.png"), "--model-dir", "m", "--out", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert opened == []


def test_out_is_created_only_once_the_model_opened(monkeypatch, photo, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), photo)
    code, _, err = run_cli(
        ["segment", str(tmp_path / "a.png"), "--model-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and "does not exist" in err and not (tmp_path / "out").exists()


def test_full_disk_stops_the_batch_with_one_line_and_nothing_partial(
    cli_fake_segmenter, monkeypatch, photo, tmp_path, capsys
):
    import errno
    import os

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(inputs / f"{name}.png"), photo)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out"
    code, _, err = run_cli(["segment", str(inputs), "--model-dir", "m", "--out", str(out), "-q"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"no space left on device writing {out / 'a_labels.png'}" in err
    assert cli_fake_segmenter.encode_calls == 1 and _tree(out) == []  # stopped at once, no temporaries


def test_stale_temporaries_hidden_files_and_broken_links_are_handled(cli_fake_segmenter, photo, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    cv2.imwrite(str(inputs / "a.png"), photo)
    cv2.imwrite(str(inputs / ".hidden.png"), photo)
    (inputs / ".a.diffcut-tmp-x1y2.png").write_bytes(b"half")  # left by a crash
    (out / ".a_labels.diffcut-tmp-x1y2.png").write_bytes(b"half")
    (inputs / "gone.png").symlink_to(inputs / "missing.png")
    (inputs / "loop.png").symlink_to(inputs / "loop.png")
    code, _, err = run_cli(["segment", str(inputs), "--model-dir", "m", "--out", str(out), "-q"], capsys)
    assert code == 2 and "2 of 3 image(s) failed" in err
    assert err.count("broken symbolic link") == 2 and ".hidden.png" not in err
    assert cli_fake_segmenter.encode_calls == 1 and (out / "a_labels.png").is_file()


def test_truncated_bmp_and_tiff_give_our_line_only(photo, tmp_path):
    for suffix in (".bmp", ".tiff"):
        data = cv2.imencode(suffix, photo)[1].tobytes()
        (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    proc = run_fresh_process(
        [
            "segment",
            str(tmp_path / "cut.bmp"),
            str(tmp_path / "cut.tiff"),
            "--model-dir",
            "m",
            "--out",
            str(tmp_path / "out"),
            "-q",
        ],
        tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("diffcut-edge segment: ") for line in lines), proc.stderr


def test_model_dir_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "encoder.onnx").write_bytes(b"x")
    code, _, err = run_cli(["bench", "--model-dir", str(tmp_path / "encoder.onnx")], capsys)
    assert code == 2 and "is a file, not a model folder" in err and "does not exist" not in err


def test_segment_without_a_model_says_what_to_pass(tmp_path, capsys):
    code, _, err = run_cli(["segment", "x.png", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--model-dir MODEL_DIR" in err and "--model HUB_ID|DIR" in err


def test_record_into_a_read_only_folder_blames_the_folder(cli_fake_segmenter, tmp_path, capsys):
    from helpers.fake_segmenter import make_video

    make_video(tmp_path / "clip.avi", n=3)
    for verb in (
        ["video", str(tmp_path / "clip.avi"), "/sys/out.mp4"],
        ["webcam", "--source", str(tmp_path / "clip.avi"), "--headless", "--record", "/sys/out.mp4"],
    ):
        code, _, err = run_cli([*verb, "--model-dir", "m"], capsys)
        assert code == 2 and "not writable" in err and "codec" not in err, err
    assert cli_fake_segmenter.encode_calls == 0


def test_odd_sized_video_reports_the_size_it_wrote(cli_fake_segmenter, tmp_path, capsys):
    from helpers.fake_segmenter import make_video
    from helpers.video import video_geometry

    make_video(tmp_path / "odd.avi", n=3, size=(95, 127))
    out = tmp_path / "out.mp4"
    code, stdout, err = run_cli(["video", str(tmp_path / "odd.avi"), str(out), "--model-dir", "m"], capsys)
    assert code == 0, err
    _, _, (width, height) = video_geometry(out)
    assert f"{width}x{height}" in stdout.split(":")[0]  # the summary names the size in the file


def test_video_writer_says_when_the_encoder_changed_the_size(tmp_path):
    from diffcut_edge.apps.video import AtomicVideoWriter
    from helpers.video import video_geometry

    writer = AtomicVideoWriter(tmp_path / "odd.mp4", 10.0, codec="mp4v")
    for _ in range(3):
        writer.write(np.zeros((95, 127, 3), np.uint8))
    writer.commit()
    stored = video_geometry(tmp_path / "odd.mp4")[2]
    assert writer.written_size == stored
    if stored != (127, 95):  # mp4v rounds down to even sizes (seen: 126x94)
        assert (
            writer.size_note()
            == f"frames of 127x95 stored as {stored[0]}x{stored[1]} (the mp4v encoder needs even sizes)"
        )
    else:
        assert writer.size_note() == ""


def test_webcam_record_from_a_source_without_frames_is_an_error(cli_fake_segmenter, monkeypatch, tmp_path, capsys):
    from diffcut_edge.apps.video import FrameReader
    from helpers.fake_segmenter import make_video

    make_video(tmp_path / "clip.avi", n=3)
    monkeypatch.setattr(FrameReader, "__iter__", lambda self: iter(()))
    record = tmp_path / "rec.mp4"
    code, stdout, err = run_cli(
        ["webcam", "--source", str(tmp_path / "clip.avi"), "--headless", "--record", str(record), "--model-dir", "m"],
        capsys,
    )
    assert code == 2 and "nothing recorded" in err and "recorded" not in stdout
    assert _tree(tmp_path) == ["clip.avi"]


def test_sigterm_during_record_finishes_the_file_and_exits_143(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from helpers.video import video_geometry

    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    rng = np.random.default_rng(0)
    for _ in range(400):
        writer.write(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    writer.release()
    record = tmp_path / "rec.avi"
    tests = Path(__file__).parents[1]
    code = (
        "import sys, time; sys.path.insert(0, sys.argv.pop(1)); from helpers.fake_segmenter import FakeSegmenter\n"
        "class Slow(FakeSegmenter):\n"
        "    def encode(self, frames):\n"
        "        time.sleep(0.02); return super().encode(frames)\n"
        "from diffcut_edge import cli; from diffcut_edge.apps import pipeline\n"
        "pipeline.open_segmenter = lambda spec, **kwargs: Slow()\n"
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            str(tests),
            "webcam",
            "--model-dir",
            "m",
            "--source",
            str(tmp_path / "clip.avi"),
            "--headless",
            "--record",
            str(record),
            "--codec",
            "MJPG",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(".diffcut-tmp-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)  # some frames recorded
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().endswith("terminated"), err
    frames, _, size = video_geometry(record)
    assert 0 < frames < 400 and size == (128, 96)
    assert _tree(tmp_path) == ["clip.avi", "rec.avi"]  # no temporary left beside it


def test_a_permission_error_anywhere_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    # Root reads everything, so the OS cannot be made to refuse here: the error is raised where an
    # unreadable model folder would raise it.
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "model"))

    monkeypatch.setattr(pipeline, "open_segmenter", refused)
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    code, _, err = run_cli(
        ["segment", str(tmp_path / "a.png"), "--model-dir", str(tmp_path / "model"), "--out", str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and f"permission denied: {tmp_path / 'model'}" in err


def test_a_pipeline_folder_and_a_model_folder_given_the_wrong_way_round_say_so(tmp_path, capsys):
    pipeline, model = tmp_path / "pipe", tmp_path / "model"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    code, _, err = run_cli(["bench", "--model-dir", str(pipeline)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"pass it as --model {pipeline}" in err
    from diffcut_edge.errors import DiffCutError
    from diffcut_edge.models.loading import check_pipeline_folder

    with pytest.raises(DiffCutError, match="exported model folder, not a diffusers pipeline: pass it as --model-dir"):
        check_pipeline_folder(model)


def test_third_party_warnings_that_are_not_the_users_stay_off_the_terminal(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("diffusers", reason="make-tiny needs the [export] extra")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffcut_edge.cli",
            "models",
            "make-tiny",
            "--family",
            "sd1",
            "--out",
            str(tmp_path / "tiny"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            k: v
            for k, v in __import__("os").environ.items()
            if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "[transformers]" not in proc.stderr and "torchvision" not in proc.stderr, proc.stderr


def test_a_verb_of_the_export_stage_without_torch_names_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # a runtime-only install
    from diffcut_edge.export import verify

    def needs_torch(*args, **kwargs):
        import torch  # noqa: F401

    monkeypatch.setattr(verify, "verify_model", needs_torch)
    code, _, err = run_cli(["verify", "--model", "pipe", "--model-dir", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "pip install 'diffcut-edge[export]'" in err
