"""DiffCut inside a plain OpenCV loop: capture -> keyframes + optical flow -> stable colours -> window.

    python examples/opencv_app.py MODEL_DIR [SOURCE] [--headless] [--keyframes every:N|auto]

SOURCE: a camera index (default 0), a video file, an rtsp/http URL or csi://0 (Jetson). The encoder
runs on keyframes in its own thread (default auto); every frame is shown at once, its labels carried
by optical flow. --headless (or DIFFCUT_HEADLESS=1) prints a line per frame; q or Esc quits.
"""

import os
import sys

import cv2

from diffcut_edge.apps.hud import FpsMeter, draw_hud, gui_problem, hud_text
from diffcut_edge.apps.pipeline import iter_segmented
from diffcut_edge.apps.tracking import TrackedOverlay
from diffcut_edge.apps.video import FrameReader
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import Segmenter


def main(argv: list[str]) -> int:
    headless, keyframes, args, rest = os.environ.get("DIFFCUT_HEADLESS") == "1", "auto", [], iter(argv)
    for arg in rest:
        if arg == "--keyframes":
            keyframes = next(rest, keyframes)
        elif arg == "--headless":
            headless = True
        else:
            args.append(arg)
    if not args or (not headless and gui_problem()):
        print(__doc__ if not args else f"{gui_problem()}; or run with --headless", file=sys.stderr)
        return 2
    draw, meter = TrackedOverlay(), FpsMeter()  # same segment, same colour, frame after frame
    try:
        with FrameReader(args[1] if len(args) > 1 else "0") as reader, Segmenter.from_model_dir(args[0]) as seg:
            realtime = keyframes != "every:1"  # every:1: each frame waits for its own DiffCut
            pace = reader.info.fps if realtime and not reader.spec.live else None
            for item in iter_segmented(reader, seg, keyframes=keyframes, realtime=realtime, pace_fps=pace):
                vis, result = draw(item.frame, item.result), item.result
                text = hud_text(meter.tick(), result.timings, result.num_segments, seg.options.refine, frame=item)
                draw_hud(vis, text)
                if headless:
                    print(text)
                    continue
                cv2.imshow("DiffCut", vis)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    except DiffCutError as e:
        print(f"cannot open or run: {e}", file=sys.stderr)
        return 1
    if not headless:
        cv2.destroyAllWindows()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
