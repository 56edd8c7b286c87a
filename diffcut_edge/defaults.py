"""The paper's settings and the names every stage shares, defined once.

Pure constants (no imports): the runtime, the reference, the export stage, the CLI and
the docs all read them from here (docs/design.md, "The algorithm, as the official code computes it").
"""

from __future__ import annotations

# --- DiffCut (Couairon et al. 2024), official code at commit aa16df4
RESOLUTION = 1024  # R: the encoder input side; features on an R/32 grid
TIMESTEP = 50  # DDIM timestep at which the UNet is read
NOISE_SEED = 42  # generator seed of the fixed noise
TAU = 0.5  # NCut threshold: a cut is kept while NCut(cut) < tau
ALPHA = 10.0  # affinity exponent, W <- W ** alpha
MAX_TAU = 2.0  # an NCut value is at most 2: every larger tau keeps every cut, as 2 does
MAX_ALPHA = 1000.0  # past ~1e300 the eigen-solver fails; past 1000 every affinity but the top is 0
MASK_SIZE = (128, 128)  # concept-assignment / PAMR label map (height, width)
PAMR_ITERATIONS = 10  # PAMR as DiffCut applies it
PAMR_DILATIONS = (1, 2, 4, 8)

# --- export
# ONNX opset of the exported graph: 17 is the newest opset TensorRT 8.6 (JetPack 6.0) documents
# and the first with LayerNormalization; every supported TensorRT (8.6, 10.x, 11.x) parses it.
OPSET = 17

# --- bounds that keep a bad value a clear error instead of a MemoryError
MAX_MASK_SIDE = 4096  # a 4096x4096 int32 map is 64 MB; PAMR holds ~30 float maps per segment

# --- names
FAMILIES = ("sdxl", "sd1")  # model families (models/recipes.py holds their specs)
PRECISIONS = ("fp32", "fp16")  # exported UNet precision (the VAE encoder stays fp32)
QUANTIZED_PRECISIONS = ("int8",)  # written by `diffcut-edge quantize` from an fp32 folder
FOLDER_PRECISIONS = (*PRECISIONS, *QUANTIZED_PRECISIONS)  # what a model folder's manifest may say
VAES = ("full", "tiny")  # VAE encoder of an export: the model's own, or AutoencoderTiny (TAESD)
DEVICES = ("cpu", "cuda")  # where post-processing runs
STAGES = ("preprocess", "encoder", "ncut", "assign", "pamr")  # Segmenter stages, in order
TIMING_KEYS = (*STAGES, "total")  # SegmentationResult.timings keys

# --- open vocabulary (official eval_diffcut_openvoc.py)
OPEN_VOCAB_PAMR_ITERATIONS = 15
OPEN_VOCAB_PAMR_DILATIONS = (1, 2, 4, 8, 12, 24, 32, 64)
OPEN_VOCAB_MASK_SIZE = (1024, 1024)
