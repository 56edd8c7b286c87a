"""Video files for the tests: geometry read back, a corrupted frame, the CLI in a fresh process."""

from __future__ import annotations

import cv2


def video_geometry(path):
    cap = cv2.VideoCapture(str(path))
    try:
        frames = 0
        while cap.read()[0]:
            frames += 1
        return (
            frames,
            cap.get(cv2.CAP_PROP_FPS),
            (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))),
        )
    finally:
        cap.release()


def corrupt_frame(src, dst, index: int) -> None:
    """Zero the start of the index-th JPEG inside an MJPG AVI (a broken frame mid-file)."""
    data = bytearray(src.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[index] : starts[index] + 600] = bytes(600)
    dst.write_bytes(bytes(data))


def run_fresh_process(argv, cwd):
    """The CLI in a new interpreter with the cli_fake_segmenter segmenter: FFmpeg's log level is set once per
    process, so only a fresh one shows what a user's terminal gets on fd 2."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent.parent
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); from helpers.fake_segmenter import FakeSegmenter; "
        "from diffcut_edge import cli; from diffcut_edge.apps import pipeline; "
        "pipeline.open_segmenter = lambda spec, **kwargs: FakeSegmenter(); "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(tests), *argv], capture_output=True, text=True, cwd=cwd, timeout=120
    )
