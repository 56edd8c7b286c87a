"""The python-backend models of a ``triton-repo`` repository, run inside Triton's stub.

Each generated ``model.py`` calls :func:`open_model`; the role (a config parameter) picks
:class:`PreprocessModel`, :class:`EncoderModel` or :class:`PostprocessModel`. They call the
same runtime functions as :class:`~diffcut_edge.runtime.Segmenter`, so a served label map is
the local one. A bad request gets an error response (its message is the runtime's one-line
error); the model and the server keep serving.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # only inside Triton's python-backend stub

    return pb_utils


# Tensors cross the stub through DLPack, not through its numpy bridge: tritonserver 2.51's stub
# (nvidia-pytriton 0.7) was built against numpy 1's C layout, and under numpy 2 its ``as_numpy()``
# returns zeros and ``Tensor(name, array)`` sends 0 bytes. DLPack is ABI-stable across both.
def tensor_to_numpy(tensor: Any) -> np.ndarray:
    return np.from_dlpack(tensor)


def numpy_to_tensor(name: str, array: np.ndarray) -> Any:
    return _pb().Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _quiet_capsule_noise(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook that drops the one harmless error the 2.51 stub's DLPack
    capsule destructor raises for every output (it checks a name numpy has already renamed)."""

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is ValueError and "PyCapsule_GetPointer" in str(unraisable.exc_value):
            return
        previous(unraisable)

    return hook


def _rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    """The contract's RGB frame as the runtime's BGR view (no copy), checked first."""
    from diffcut_edge.runtime.preprocess import check_frame

    check_frame(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DiffCutError(f"image: expected UINT8 [H, W, 3] RGB, got shape {list(image.shape)}")
    return image[:, :, ::-1]


class _Model:
    """One python model: ``run`` maps one request's inputs to its outputs (numpy arrays)."""

    inputs: tuple[str, ...] = ()

    def __init__(self, args: dict[str, Any], params: dict[str, str]) -> None:
        self.folder = Path(args["model_repository"]) / str(args["model_version"])
        self.params = params

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        pb = _pb()
        return {name: tensor_to_numpy(pb.get_input_tensor_by_name(request, name)) for name in self.inputs}

    @staticmethod
    def _response(outputs: dict[str, np.ndarray]) -> Any:
        pb = _pb()
        return pb.InferenceResponse(output_tensors=[numpy_to_tensor(k, v) for k, v in outputs.items()])

    @staticmethod
    def _error(error: Exception) -> Any:
        pb = _pb()
        code = getattr(pb.TritonError, "INVALID_ARG", None)  # a client's mistake: HTTP 400, not 500
        triton_error = pb.TritonError(str(error)) if code is None else pb.TritonError(str(error), code)
        return pb.InferenceResponse(output_tensors=[], error=triton_error)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._response(self.run(self._inputs(request))))
            except (DiffCutError, ValueError) as e:  # a bad request: answer it, keep serving
                responses.append(self._error(e))
        return responses

    def close(self) -> None:
        pass


class PreprocessModel(_Model):
    """image UINT8 [H, W, 3] RGB -> pixels FP32 [1, 3, R, R] (the runtime's preprocess)."""

    inputs = ("image",)

    def __init__(self, args: dict[str, Any], params: dict[str, str]) -> None:
        super().__init__(args, params)
        self.resolution = int(params["resolution"])

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from diffcut_edge.runtime.preprocess import preprocess

        return {"pixels": preprocess([_rgb_to_bgr(arrays["image"])], self.resolution)}


class PostprocessModel(_Model):
    """features FP32 [1, N, C] + image -> labels INT32 [H, W], num_segments INT32 [1]; with a
    vocabulary, + pixels -> segments UINT8 [n] (the segments JSON: BYTES tensors are empty under numpy 2
    in the 2.51 stub, UINT8 crosses through DLPack)."""

    inputs = ("features", "image")

    def __init__(self, args: dict[str, Any], params: dict[str, str]) -> None:
        super().__init__(args, params)
        from diffcut_edge.runtime.manifest import read_manifest
        from diffcut_edge.runtime.postprocess import Postprocessor
        from diffcut_edge.runtime.segmenter import names_segments
        from diffcut_edge.runtime.spec import SegmenterSpec

        # The SegmenterSpec triton-repo wrote, opened on the files beside this model.
        spec = SegmenterSpec.from_dict({**json.loads(params["segmenter"]), "model_dir": str(self.folder)})
        manifest = read_manifest(self.folder)
        self.post = Postprocessor.for_manifest(manifest, spec.options, spec.device or "cpu")
        self.labeler = None
        if names_segments(manifest, spec.classes, spec.name_segments):
            from diffcut_edge.runtime.labeling import SegmentLabeler

            self.labeler = SegmentLabeler.from_model_dir(self.folder, spec.classes, manifest=manifest)
            self.inputs = (*self.inputs, "pixels")

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.post(_rgb_to_bgr(arrays["image"]), arrays["features"][0])
        outputs = {"labels": result.labels, "num_segments": np.array([result.num_segments], dtype=np.int32)}
        if self.labeler is not None:
            from diffcut_edge.apps.batch import segments_document

            self.labeler.name_result(result, arrays["pixels"])
            text = json.dumps(segments_document(result, masks=False), ensure_ascii=False)  # the labels carry the masks
            outputs["segments"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        return outputs

    def close(self) -> None:
        if self.labeler is not None:
            self.labeler.close()
        super().close()


class EncoderModel(_Model):
    """Batched encoder: the requests the dynamic batcher gathered run as one batch (in chunks of
    the backend's maximum), through this project's ONNX Runtime / TensorRT backend."""

    def __init__(self, args: dict[str, Any], params: dict[str, str]) -> None:
        super().__init__(args, params)
        from diffcut_edge.runtime.backends import open_backend

        self.backend = open_backend(self.folder / "model", params.get("backend", "auto"))
        self.inputs = (self.backend.input_name,)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        from diffcut_edge.runtime.xp import to_host

        try:
            batches = [self._inputs(r)[self.backend.input_name] for r in requests]
            images = np.concatenate(batches, axis=0)
            step = self.backend.max_batch or len(images)
            parts = [
                to_host(self.backend.infer({self.backend.input_name: images[i : i + step]})[self.backend.output_name])
                for i in range(0, len(images), step)
            ]
            features = np.concatenate(parts, axis=0)
        except (DiffCutError, ValueError) as e:
            return [self._error(e) for _ in requests]
        bounds = np.cumsum([0, *(len(b) for b in batches)])
        return [self._response({self.backend.output_name: features[a:b]}) for a, b in zip(bounds[:-1], bounds[1:])]

    def close(self) -> None:
        self.backend.close()


ROLES = {"preprocess": PreprocessModel, "encoder": EncoderModel, "postprocess": PostprocessModel}


def open_model(args: dict[str, Any], params: dict[str, str]) -> _Model:
    """The model a generated ``model.py`` runs (its ``role`` parameter picks the class)."""
    if not getattr(sys.unraisablehook, "_diffcut", False):
        sys.unraisablehook = _quiet_capsule_noise(sys.unraisablehook)
        sys.unraisablehook._diffcut = True
    return ROLES[params["role"]](args, params)
