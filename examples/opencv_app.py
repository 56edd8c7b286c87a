"""DiffCut inside a plain OpenCV loop: capture -> Segmenter -> stable colours -> window.

    python examples/opencv_app.py MODEL_DIR [SOURCE] [--headless]

SOURCE is a camera index (default 0), a video file or an rtsp/http URL. With --headless
(or DIFFCUT_HEADLESS=1) no window opens and one line per frame is printed instead.
Keys in the window: q or Esc to quit.
"""

import os
import sys

import cv2

from diffcut_edge.apps.hud import FpsMeter, draw_hud, hud_text
from diffcut_edge.apps.tracking import TrackedOverlay
from diffcut_edge.runtime import Segmenter


def main(argv: list[str]) -> int:
    headless = "--headless" in argv or os.environ.get("DIFFCUT_HEADLESS") == "1"
    args = [a for a in argv if a != "--headless"]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    source = args[1] if len(args) > 1 else "0"
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        print(f"cannot open {source}", file=sys.stderr)
        return 1
    draw, meter = TrackedOverlay(), FpsMeter()  # same segment, same colour, frame after frame
    with Segmenter.from_model_dir(args[0]) as seg:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            result = seg(frame)
            vis = draw(frame, result)
            text = hud_text(meter.tick(), result.timings, result.num_segments, seg.options.refine)
            draw_hud(vis, text)
            if headless:
                print(text)
                continue
            cv2.imshow("DiffCut", vis)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                break
    cap.release()
    if not headless:
        cv2.destroyAllWindows()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
