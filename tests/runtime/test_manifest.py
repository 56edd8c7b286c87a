"""A model folder is untrusted input: names confined to the folder, no special files, typed and bounded
fields, a resolution the graph agrees with, bounded decompression of the vocabulary files."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.backends import open_backend
from diffcut_edge.runtime.manifest import MANIFEST_NAME, folder_file, read_manifest, verify_files
from helpers.toy_encoder import make_toy_model_dir


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_model_dir(tmp_path_factory.mktemp("toy"), resolution=256)


def _copy(toy: Path, tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(toy, folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.update(changes)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("name", ["../encoder.onnx", "/etc/passwd", "sub/encoder.onnx", "..", "", "a\\\\b"])
def test_file_names_must_be_plain_names_of_the_folder(toy, tmp_path, name):
    folder = _copy(toy, tmp_path, onnx_file=name, files_sha256={name: "0" * 64})
    with pytest.raises(DiffCutError, match="not a plain file name") as err:
        read_manifest(folder)
    assert "\n" not in str(err.value)


def test_links_out_of_the_folder_and_special_files_are_refused(toy, tmp_path):
    folder = _copy(toy, tmp_path)
    (folder / "encoder.onnx").unlink()
    (folder / "encoder.onnx").symlink_to("/etc/passwd")
    with pytest.raises(DiffCutError, match="leads outside the model folder"):
        verify_files(folder, read_manifest(folder))
    (folder / "encoder.onnx").unlink()
    (folder / "encoder.onnx").symlink_to("/proc/self/pagemap")  # hashing it would hang
    with pytest.raises(DiffCutError, match="leads outside"):
        open_backend(folder, "ort-cpu")
    (folder / "encoder.onnx").unlink()
    os.mkfifo(folder / "encoder.onnx")  # inside the folder, but a FIFO
    with pytest.raises(DiffCutError, match="not a regular file"):
        verify_files(folder, read_manifest(folder))
    assert folder_file(folder, "missing.onnx") == folder / "missing.onnx"  # the caller says it is missing


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"resolution": "256"}, "resolution must be an integer"),
        ({"resolution": True}, "resolution must be an integer"),
        ({"model_id": ["x"]}, "model_id must be a string"),
        ({"files_sha256": ["encoder.onnx"]}, "files_sha256 must be an object"),
        ({"resolution": 65536, "grid": [2048, 2048]}, "outside 64..4096"),
        ({"channels": 10**9}, "channels"),
        ({"grid": [[1], 2]}, "malformed field"),
        ({"engines": ["x"]}, "malformed field"),
    ],
)
def test_fields_have_the_types_and_bounds_the_runtime_relies_on(toy, tmp_path, changes, message):
    with pytest.raises(DiffCutError, match=message):
        read_manifest(_copy(toy, tmp_path, **changes))


def test_a_deep_or_huge_manifest_is_one_line(toy, tmp_path):
    folder = _copy(toy, tmp_path)
    (folder / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DiffCutError, match="nests too deeply|not valid JSON"):
        read_manifest(folder)
    (folder / MANIFEST_NAME).write_bytes(b" " * (2 << 20))
    with pytest.raises(DiffCutError, match="not a manifest"):
        read_manifest(folder)


def test_the_resolution_must_be_the_graphs(toy, tmp_path):
    folder = _copy(toy, tmp_path, resolution=512, grid=[16, 16])  # the graph takes 256
    with pytest.raises(DiffCutError, match=r"takes input .* but the manifest says \(B, 3, 512, 512\)"):
        open_backend(folder, "ort-cpu")


def test_vocabulary_files_inflate_within_bounds(tmp_path):
    from diffcut_edge.runtime.tokenizer import MAX_BPE_BYTES, ClipTokenizer
    from diffcut_edge.runtime.vocabulary import MAX_BANK_BYTES, TextBank

    bomb = tmp_path / "bpe.txt.gz"
    with gzip.open(bomb, "wb") as f:
        chunk = b"a" * (1 << 20)
        for _ in range(MAX_BPE_BYTES // len(chunk) + 4):
            f.write(chunk)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DiffCutError, match="inflates past"):
        ClipTokenizer(bomb)
    (tmp_path / "corrupt.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    with pytest.raises(DiffCutError, match="not CLIP's BPE vocabulary"):
        ClipTokenizer(tmp_path / "corrupt.gz")
    # An npz whose member inflates past the bound: refused before np.load reads (and allocates) it.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("embeddings.npy", "w", force_zip64=True) as member:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "<f4", "fortran_order": False, "shape": (MAX_BANK_BYTES // 4 + 1024,)}
            )
            member.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(MAX_BANK_BYTES // len(zeros) + 1):
                member.write(zeros)
    (tmp_path / "bank.npz").write_bytes(buf.getvalue())
    assert (tmp_path / "bank.npz").stat().st_size < 4 << 20
    with pytest.raises(DiffCutError, match="more than a text bank can"):
        TextBank.from_file(tmp_path / "bank.npz")


def test_the_cli_says_it_in_one_line(toy, tmp_path, capsys):
    from diffcut_edge import cli

    folder = _copy(toy, tmp_path, onnx_file="../../etc/passwd")
    image = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    code = cli.main(["segment", str(image), "--model-dir", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a plain file name" in err
