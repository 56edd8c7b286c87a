"""The PyTorch reference of the open-vocabulary labelling: the official ``tools/clip_classifier.py``
and ``associate_label`` of ``eval_diffcut_openvoc.py`` (adapted from FC-CLIP), same math, on any device.

Departures, each on purpose: the text bank's prompts are embedded in batches of 128 as the official
(bounded memory), and :func:`associate_labels` returns each segment's class, score and logits
instead of painting a mask (the painting is ``labels -> class`` lookup, done by the caller).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from diffcut_edge.runtime.vocabulary import VILD_TEMPLATES, Vocabulary

PROMPT_BATCH = 128


def dense_features(clip: Any, image: torch.Tensor) -> torch.Tensor:
    """``clip_vis_dense`` of ``extract_features_convnext``: stem, the 4 stages, norm_pre.

    image: (B, 3, H, W) RGB in [0, 1] (no CLIP normalisation on this path, as the official) ->
    (B, C, H/32, W/32).
    """
    trunk = clip.visual.trunk
    x = trunk.stem(image)
    for i in range(4):
        x = trunk.stages[i](x)
    return trunk.norm_pre(x)


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``MaskPooling``: (B, C, h, w) features, (B, Q, H, W) masks -> (B, Q, C) means over each mask
    resized nearest-exact to (h, w) and binarised (denominator + 1e-8)."""
    if features.shape[-2:] != masks.shape[-2:]:
        masks = F.interpolate(masks, size=features.shape[-2:], mode="nearest-exact")
    masks = (masks > 0).to(masks.dtype)
    denominator = masks.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", features, masks / denominator)


def visual_head(clip: Any, pooled: torch.Tensor) -> torch.Tensor:
    """``visual_prediction_forward_convnext``: (B, Q, C) -> (B, Q, D) through trunk.head and visual.head."""
    batch, queries, channels = pooled.shape
    x = pooled.reshape(batch * queries, channels, 1, 1)
    x = clip.visual.trunk.head(x)
    x = clip.visual.head(x)
    return x.view(batch, queries, x.shape[-1])


def encode_text(clip: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The official ``encode_text`` (un-normalised): token + positional embedding, the transformer
    under the causal mask, ln_final, the end-of-text token's row, the text projection.

    ``tokens`` is (N, L) with L <= the context length: the positional embedding and the causal mask
    are cut to L. At L = 77 (what the tokenizer gives) this is the official computation; a shorter
    L that keeps every end token gives the same rows, because the tower is causal and reads the end
    token (the exported text graph takes any L, and the runtime drops the padding).
    """
    length = tokens.shape[1]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:length].to(cast)
    mask = None if clip.attn_mask is None else clip.attn_mask[:length, :length]
    if not getattr(clip.transformer, "batch_first", True):
        x = clip.transformer(x.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)
    else:
        x = clip.transformer(x, attn_mask=mask)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ clip.text_projection


def text_classifier(
    clip: Any, tokenizer: Any, vocabulary: Vocabulary, templates: Sequence[str] = VILD_TEMPLATES
) -> torch.Tensor:
    """``get_text_classifier``: (S, D), one normalised embedding per synonym (template average)."""
    prompts = vocabulary.prompts(templates)
    with torch.no_grad():
        parts = [
            encode_text(clip, tokenizer(prompts[i : i + PROMPT_BATCH])) for i in range(0, len(prompts), PROMPT_BATCH)
        ]
    x = torch.cat(parts, dim=0)
    x = x / x.norm(dim=-1, keepdim=True)
    x = x.reshape(x.shape[0] // len(templates), len(templates), x.shape[-1]).mean(1)
    return x / x.norm(dim=-1, keepdim=True)


def classification_logits(
    x: torch.Tensor, classifier: torch.Tensor, logit_scale: torch.Tensor, synonym_counts: Sequence[int]
) -> torch.Tensor:
    """``get_classification_logits``: (B, Q, K + 1), per class the max over its synonyms, then the
    trailing "void" column (the last synonym's logit)."""
    x = F.normalize(x, dim=-1)
    scale = torch.clamp(logit_scale.exp(), max=100)
    logits = scale * x @ classifier.T
    out, start = [], 0
    for count in synonym_counts:
        out.append(logits[:, :, start : start + count].max(-1).values)
        start += count
    out.append(logits[:, :, -1])
    return torch.stack(out, dim=-1)


def associate_labels(
    clip: Any, image: torch.Tensor, label_map: torch.Tensor, classifier: torch.Tensor, synonym_counts: Sequence[int]
) -> list[dict]:
    """``associate_label``, one segment at a time as the official: per id of ``label_map`` (H, W),
    {"id", "class_index", "score", "logits"} with logits the K class logits (void dropped)."""
    with torch.no_grad():
        features = dense_features(clip, image)
        out = []
        for i in torch.unique(label_map):
            mask = (label_map == i).to(features.dtype)[None, None]
            pooled = mask_pool(features, mask)[0].reshape(1, 1, -1)
            embedded = visual_head(clip, pooled)
            logits = classification_logits(embedded, classifier, clip.logit_scale, synonym_counts)[..., :-1]
            probs = logits.softmax(-1)
            index = int(torch.argmax(probs).item())
            out.append(
                {
                    "id": int(i.item()),
                    "class_index": index,
                    "score": float(probs.flatten()[index]),
                    "logits": logits.flatten().clone(),
                }
            )
    return out
