"""Reading official yacs YAML configs into a :class:`~glip.config.GLIPConfig`.

An official config is either partial (``configs/pretrain/*.yaml``, merged over
``maskrcnn_benchmark/config/defaults.py``) or a full ``cfg.dump()``. Only the keys that change
the computation are read; their official defaults are in :data:`OFFICIAL_DEFAULTS`. Values the
released models never use (other backbones, fusion types, ...) are refused with the key named, and
so is a key the official config does not have (``official_keys.txt``): yacs refuses it too, and a
misspelt ``PIXEL_STD`` would otherwise silently leave the default preprocessing in place.
"""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from glip.config import (
    BERT_BASE_UNCASED,
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

# defaults.py values of every key read here (github microsoft/GLIP @ 9dda955).
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.RPN_ARCHITECTURE": "RPN",
    "MODEL.BACKBONE.CONV_BODY": "R-50-C4",
    "MODEL.BACKBONE.OUT_CHANNELS": 1024,
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": 2,
    "MODEL.SWINT.EMBED_DIM": 96,
    "MODEL.SWINT.DEPTHS": (2, 2, 6, 2),
    "MODEL.SWINT.NUM_HEADS": (3, 6, 12, 24),
    "MODEL.SWINT.WINDOW_SIZE": 7,
    "MODEL.SWINT.MLP_RATIO": 4,
    "MODEL.SWINT.DROP_PATH_RATE": 0.2,
    "MODEL.SWINT.APE": False,
    "MODEL.FPN.DROP_PROB": 0.3,
    "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE": "bert-base-uncased",
    "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE": "bert-base-uncased",
    "MODEL.LANGUAGE_BACKBONE.LANG_DIM": 768,
    "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": 256,
    "MODEL.LANGUAGE_BACKBONE.FREEZE": False,
    "MODEL.LANGUAGE_BACKBONE.N_LAYERS": 1,
    "MODEL.LANGUAGE_BACKBONE.PAD_MAX": True,
    "MODEL.GROUP_NORM.NUM_GROUPS": 16,
    "MODEL.DYHEAD.CHANNELS": 128,
    "MODEL.DYHEAD.NUM_CONVS": 4,
    "MODEL.DYHEAD.NUM_CLASSES": 81,
    "MODEL.DYHEAD.PRIOR_PROB": 0.01,
    "MODEL.DYHEAD.LOG_SCALE": 0.0,
    "MODEL.DYHEAD.SCORE_AGG": "MEAN",
    "MODEL.DYHEAD.USE_GN": False,
    "MODEL.DYHEAD.USE_DYRELU": False,
    "MODEL.DYHEAD.USE_DFCONV": False,
    "MODEL.DYHEAD.USE_DYFUSE": False,
    "MODEL.DYHEAD.USE_CHECKPOINT": False,
    "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON": False,
    "MODEL.DYHEAD.FUSE_CONFIG.TYPE": "",
    "MODEL.DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT": False,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE": True,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MIN_FOR_UNDERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MAX_FOR_OVERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MAX_FOR_OVERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT": False,
    "MODEL.RPN.ANCHOR_SIZES": (32, 64, 128, 256, 512),
    "MODEL.RPN.ANCHOR_STRIDE": (16,),
    "MODEL.RPN.ASPECT_RATIOS": (0.5, 1.0, 2.0),
    "MODEL.RPN.SCALES_PER_OCTAVE": 3,
    "MODEL.ATSS.INFERENCE_TH": 0.05,
    "MODEL.ATSS.PRE_NMS_TOP_N": 1000,
    "MODEL.ATSS.NMS_TH": 0.6,
    "MODEL.ATSS.DETECTIONS_PER_IMG": 100,
    "INPUT.PIXEL_MEAN": (102.9801, 115.9465, 122.7717),
    "INPUT.PIXEL_STD": (1.0, 1.0, 1.0),
    "INPUT.TO_BGR255": True,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "DATALOADER.SIZE_DIVISIBILITY": 0,
}

# (key, value this package implements): every released GLIP config has these.
REQUIRED_VALUES: tuple[tuple[str, Any], ...] = (
    ("MODEL.META_ARCHITECTURE", "GeneralizedVLRCNN"),
    ("MODEL.RPN_ARCHITECTURE", "VLDYHEAD"),
    ("MODEL.BACKBONE.CONV_BODY", "SWINT-FPN-RETINANET"),
    ("MODEL.SWINT.APE", False),
    ("MODEL.LANGUAGE_BACKBONE.MODEL_TYPE", "bert-base-uncased"),
    ("MODEL.LANGUAGE_BACKBONE.N_LAYERS", 1),
    ("MODEL.LANGUAGE_BACKBONE.PAD_MAX", True),
    ("MODEL.DYHEAD.USE_GN", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MIN_FOR_UNDERFLOW", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MAX_FOR_OVERFLOW", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MAX_FOR_OVERFLOW", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT", True),
    ("MODEL.RPN.ASPECT_RATIOS", (1.0,)),
    ("MODEL.RPN.SCALES_PER_OCTAVE", 1),
    ("INPUT.TO_BGR255", True),
)


# Every key of the official config, one per line; "SECTION.*" takes any keys below it.
OFFICIAL_KEYS_FILE = Path(__file__).with_name("official_keys.txt")
# Keys the official tools/train_net.py and test scripts add to ``cfg`` before merging the YAML, so
# the config.yml a training run saves has them too; they describe the run, not the model.
RUNTIME_KEYS: tuple[str, ...] = ("local_rank", "num_gpus")


class OfficialConfigError(ValueError):
    """An official config that cannot be read or describes an unsupported model."""


@lru_cache(maxsize=1)
def official_keys() -> tuple[frozenset[str], tuple[str, ...]]:
    """The official config's value keys and its open sections (each ending in ``.``)."""
    lines = [line.strip() for line in OFFICIAL_KEYS_FILE.read_text().splitlines()]
    names = [line for line in lines if line and not line.startswith("#")]
    values = frozenset(name for name in names if not name.endswith(".*")) | frozenset(RUNTIME_KEYS)
    sections = tuple(name[:-1] for name in names if name.endswith(".*"))
    return values, sections


def _describe_unknown(key: str) -> str:
    """``key`` with why it is wrong: a section given a value, or the closest official key."""
    values, _ = official_keys()
    if any(value.startswith(key + ".") for value in values):
        return f"{key} (a section, not a value)"
    close = difflib.get_close_matches(key, values, n=1, cutoff=0.8)
    return f"{key} (did you mean {close[0]}?)" if close else key


def check_known_keys(keys: Iterable[str], source: str) -> None:
    """Refuse every dotted key the official config does not have, all named at once.

    Raises:
        OfficialConfigError: listing each unknown key with its full dotted path.
    """
    values, sections = official_keys()
    unknown = [key for key in keys if key not in values and not key.startswith(sections)]
    if unknown:
        raise OfficialConfigError(
            f"{source}: {len(unknown)} key(s) the official GLIP config does not have (yacs refuses them "
            f"too): " + "; ".join(_describe_unknown(key) for key in unknown)
        )


def _parse_scalar(value: Any) -> Any:
    # yacs evaluates strings such as "(2, 2, 6, 2)" with literal_eval; so do we.
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = _parse_scalar(value)
    return flat


def _check_type(key: str, value: Any, default: Any, source: str) -> Any:
    if isinstance(default, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise OfficialConfigError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise OfficialConfigError(f"{source}: {key} must be True/False, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OfficialConfigError(f"{source}: {key} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and not float(value).is_integer():
            raise OfficialConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return type(default)(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise OfficialConfigError(f"{source}: {key} must be a string, got {value!r}")
    return value


def read_official_yaml(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{"MODEL.SWINT.EMBED_DIM": 96, ...}`` of the keys we read, defaults filled in."""
    if isinstance(config, Mapping):
        tree, source = config, "config"
    else:
        path = Path(config)
        source = str(path)
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise OfficialConfigError(f"cannot read official config {path}: {error}") from error
        if not isinstance(tree, Mapping):
            raise OfficialConfigError(f"{path}: expected a YAML mapping at the top level")
    flat = _flatten(tree)
    check_known_keys(flat, source)
    values = dict(OFFICIAL_DEFAULTS)
    for key, value in flat.items():
        if key in OFFICIAL_DEFAULTS:
            values[key] = _check_type(key, value, OFFICIAL_DEFAULTS[key], source)
    for key, required in REQUIRED_VALUES:
        if values[key] != required:
            raise OfficialConfigError(
                f"{source}: {key} = {values[key]!r} is not supported (released GLIP models use "
                f"{required!r})"
            )
    if values["MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON"] and values["MODEL.DYHEAD.FUSE_CONFIG.TYPE"] != "MHA-B":
        raise OfficialConfigError(
            f"{source}: MODEL.DYHEAD.FUSE_CONFIG.TYPE = "
            f"{values['MODEL.DYHEAD.FUSE_CONFIG.TYPE']!r} is not supported (released models use 'MHA-B')"
        )
    if values["MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON"] and not values[
        "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT"
    ]:
        raise OfficialConfigError(
            f"{source}: EARLY_FUSE_ON without USE_FUSED_FEATURES_DOT_PRODUCT is not supported (no "
            f"released model uses it; its last tower layer has no BERT layer)"
        )
    return values


def read_text_config(text_config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """A BERT config dict from a dict, a JSON/YAML file, or ``None`` (bert-base-uncased)."""
    if text_config is None:
        return dict(BERT_BASE_UNCASED)
    if isinstance(text_config, Mapping):
        data = dict(text_config)
    else:
        path = Path(text_config)
        try:
            text = path.read_text()
            # JSON first: YAML 1.1 reads "1e-12" as a string.
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, yaml.YAMLError, json.JSONDecodeError) as error:
            raise OfficialConfigError(f"cannot read text config {path}: {error}") from error
        if not isinstance(data, dict):
            raise OfficialConfigError(f"{path}: expected a mapping of BERT config values")
    settings = dict(BERT_BASE_UNCASED)
    for key, value in data.items():
        if key not in BERT_BASE_UNCASED:
            continue
        default = BERT_BASE_UNCASED[key]
        if isinstance(default, (int, float)) and isinstance(value, str):
            try:
                value = type(default)(float(value))
            except ValueError:
                raise OfficialConfigError(f"text config: {key} must be a number, got {value!r}") from None
        settings[key] = value
    return settings


def glip_config_from_official(
    config: str | Path | Mapping[str, Any],
    text_config: str | Path | Mapping[str, Any] | None = None,
    fusion_embed_dim: int | None = None,
    tokenizer: str = "bert-base-uncased",
) -> GLIPConfig:
    """Translate an official config (+ BERT config) into a :class:`GLIPConfig`.

    Args:
        config: official yacs YAML path or its parsed mapping.
        text_config: BERT config; default bert-base-uncased's.
        fusion_embed_dim: fusion width; the yacs config has no key for it (2048 in released
            models), so loaders read it from the checkpoint.
        tokenizer: tokenizer name or directory.
    """
    v = read_official_yaml(config)
    bert = read_text_config(text_config)
    source = config if not isinstance(config, Mapping) else "config"
    if v["MODEL.LANGUAGE_BACKBONE.LANG_DIM"] != bert["hidden_size"]:
        raise OfficialConfigError(
            f"{source}: MODEL.LANGUAGE_BACKBONE.LANG_DIM = {v['MODEL.LANGUAGE_BACKBONE.LANG_DIM']} "
            f"differs from the text config's hidden_size {bert['hidden_size']}"
        )
    fusion = v["MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON"]
    return GLIPConfig(
        swin=SwinConfig(
            embed_dim=v["MODEL.SWINT.EMBED_DIM"],
            depths=v["MODEL.SWINT.DEPTHS"],
            num_heads=v["MODEL.SWINT.NUM_HEADS"],
            window_size=v["MODEL.SWINT.WINDOW_SIZE"],
            mlp_ratio=float(v["MODEL.SWINT.MLP_RATIO"]),
            drop_path_rate=v["MODEL.SWINT.DROP_PATH_RATE"],
            freeze_at=v["MODEL.BACKBONE.FREEZE_CONV_BODY_AT"],
        ),
        fpn=FPNConfig(
            out_channels=v["MODEL.BACKBONE.OUT_CHANNELS"], drop_block_prob=v["MODEL.FPN.DROP_PROB"]
        ),
        language=LanguageConfig(
            bert=bert,
            max_query_len=v["MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN"],
            tokenizer=tokenizer,
            freeze=v["MODEL.LANGUAGE_BACKBONE.FREEZE"],
        ),
        fusion=FusionConfig(
            enabled=fusion,
            embed_dim=fusion_embed_dim if fusion_embed_dim is not None else 2048,
            use_fused_text_for_dot_product=v["MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT"],
        ),
        head=HeadConfig(
            channels=v["MODEL.DYHEAD.CHANNELS"],
            num_layers=v["MODEL.DYHEAD.NUM_CONVS"],
            group_norm_groups=v["MODEL.GROUP_NORM.NUM_GROUPS"],
            use_dyrelu=v["MODEL.DYHEAD.USE_DYRELU"],
            use_deformable=v["MODEL.DYHEAD.USE_DFCONV"],
            use_dyfuse=v["MODEL.DYHEAD.USE_DYFUSE"],
            prior_prob=v["MODEL.DYHEAD.PRIOR_PROB"],
            log_scale_init=v["MODEL.DYHEAD.LOG_SCALE"],
            num_classes=v["MODEL.DYHEAD.NUM_CLASSES"] - 1,
            use_checkpoint=v["MODEL.DYHEAD.USE_CHECKPOINT"],
        ),
        anchors=AnchorConfig(
            sizes=tuple(int(s) for s in v["MODEL.RPN.ANCHOR_SIZES"]),
            strides=tuple(int(s) for s in v["MODEL.RPN.ANCHOR_STRIDE"]),
        ),
        postprocess=PostProcessConfig(
            score_threshold=v["MODEL.ATSS.INFERENCE_TH"],
            pre_nms_top_n=v["MODEL.ATSS.PRE_NMS_TOP_N"],
            nms_threshold=v["MODEL.ATSS.NMS_TH"],
            detections_per_image=v["MODEL.ATSS.DETECTIONS_PER_IMG"],
            score_aggregation=v["MODEL.DYHEAD.SCORE_AGG"],
        ),
        input=InputConfig(
            pixel_mean=tuple(v["INPUT.PIXEL_MEAN"]),
            pixel_std=tuple(v["INPUT.PIXEL_STD"]),
            min_size_test=v["INPUT.MIN_SIZE_TEST"],
            # The official demo path (our default for predict) does not cap the longer side.
            max_size_test=0,
            size_divisibility=v["DATALOADER.SIZE_DIVISIBILITY"],
        ),
    )
