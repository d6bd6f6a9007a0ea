"""Object Detection in the Wild (ODinW): the 13- and 35-data-set suites (``glip eval odinw``).

Each data set is evaluated like ``glip eval coco`` (official evaluation prompt, COCO AP with
pycocotools) with what the official per-data-set configs set (``configs/odinw_13/*.yaml``,
``configs/odinw_35/*.yaml`` of microsoft/GLIP, evaluated with DATASETS.USE_OVERRIDE_CATEGORY and
DATASETS.USE_CAPTION_PROMPT on):

* the category names of the prompt (OVERRIDE_CATEGORY, ids 1..K in order);
* custom prompts of a few categories (CAPTION_PROMPT, 35-suite configs only);
* the evaluated split (DATASETS.TEST): ``valid``, or ``mini_val`` for the large data sets; the
  test split is available with ``split="test"``;
* test resize 800 / 1333 (by default the model config's test size, which is that for official
  models: :func:`glip.evaluation.protocol.resolve_test_size`), 100 detections per image.

Data sets are laid out as published (``odinw/download.py``; the official configs' paths below the
``DATASET/odinw`` root): ``<root>/<folder>/<split>/annotations_without_background.json`` with the
images beside it, or for the four "export" data sets
``<root>/<folder>/<split>_annotations_without_background.json`` with all images in ``<folder>``.

Outputs: ``OUT/<data set>/`` as ``glip eval coco`` writes them, ``OUT/metrics.json`` (``suite``,
``split``, the mean over the evaluated data sets of ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
``APl`` (over those where it is defined); ``datasets``: each data set's metrics; ``failed``: data
set -> error) and ``OUT/summary.md``. A data set that fails (missing folder, image or field) is reported and the
suite goes on; the run then fails at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glip.evaluation.annotations import check_image_files, read_coco
from glip.evaluation.coco import METRIC_NAMES, evaluate_detection
from glip.evaluation.prompts import CategoryText, clean_name
from glip.evaluation.protocol import check_output_folder
from glip.evaluation.runner import (
    DEFAULT_SAVE_EVERY,
    RunOptions,
    model_digest,
    process_group,
)
from glip.files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class OdinwDataset:
    """One ODinW data set as published (paths relative to the ODinW root).

    Attributes:
        name: the official config's name (``configs/odinw_35/<name>.yaml``).
        folder: the data set's folder below the root.
        val: the split the official config evaluates (DATASETS.TEST).
        test: the test split (PascalVOC has none: its config points at ``valid``).
        export: the flat "export" layout (``<split>_annotations_without_background.json`` and all
            images in ``folder``) instead of one folder per split.
        categories: category names for ids 1..K (official OVERRIDE_CATEGORY).
        caption_prompts: custom prompts of some categories (official CAPTION_PROMPT).
    """

    name: str
    folder: str
    val: str = "valid"
    test: str = "test"
    export: bool = False
    categories: tuple[str, ...] = ()
    caption_prompts: Mapping[str, CategoryText] = field(default_factory=dict)

    def files(self, split: str = "val") -> tuple[str, str]:
        """``(annotation file, image folder)`` of ``split`` ("val" or "test"), relative to the root."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        name = self.val if split == "val" else self.test
        if self.export:
            return f"{self.folder}/{name}_annotations_without_background.json", self.folder
        return f"{self.folder}/{name}/annotations_without_background.json", f"{self.folder}/{name}"


# The 35 data sets of configs/odinw_35/_all.json (the extra config plantdoc_100x100 is not in it).
ODINW_35: tuple[OdinwDataset, ...] = (
    OdinwDataset(
        "AerialMaritimeDrone_large",
        folder="AerialMaritimeDrone/large",
        categories=("boat", "car", "dock", "jetski", "lift"),
    ),
    OdinwDataset(
        "AerialMaritimeDrone_tiled",
        folder="AerialMaritimeDrone/tiled",
        categories=("boat", "car", "dock", "jetski", "lift"),
    ),
    OdinwDataset(
        "AmericanSignLanguageLetters_American_Sign_Language_Letters.v1-v1.coco",
        folder="AmericanSignLanguageLetters/American Sign Language Letters.v1-v1.coco",
        categories=(
            "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S", "T",
            "U", "V", "W", "X", "Y", "Z",
        ),
    ),
    OdinwDataset(
        "Aquarium_Aquarium_Combined.v2-raw-1024.coco",
        folder="Aquarium/Aquarium Combined.v2-raw-1024.coco",
        categories=("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"),
        caption_prompts={
            "fish": CategoryText("fish", prefix=" ", suffix=""),
            "penguin": CategoryText("penguin", prefix="", suffix=" , which is black and white"),
            "puffin": CategoryText("puffin", prefix="", suffix=" with orange beaks "),
            "stingray": CategoryText("stingray", prefix="", suffix=" which is flat and round"),
        },
    ),
    OdinwDataset(
        "BCCD_BCCD.v3-raw.coco",
        folder="BCCD/BCCD.v3-raw.coco",
        categories=("Platelets", "RBC", "WBC"),
    ),
    OdinwDataset(
        "ChessPieces_Chess_Pieces.v23-raw.coco",
        folder="ChessPieces/Chess Pieces.v23-raw.coco",
        categories=(
            "  ", "black bishop", "black king", "black knight", "black pawn", "black queen", "black rook",
            "white bishop", "white king", "white knight", "white pawn", "white queen", "white rook",
        ),
    ),
    OdinwDataset(
        "CottontailRabbits",
        folder="CottontailRabbits",
        categories=("rabbit",),
    ),
    OdinwDataset(
        "DroneControl_Drone_Control.v3-raw.coco",
        folder="DroneControl/Drone Control.v3-raw.coco",
        val="mini_val",
        categories=("follow", "follow_hand", "land", "land_hand", "null", "object", "takeoff", "takeoff-hand"),
    ),
    OdinwDataset(
        "EgoHands_generic",
        folder="EgoHands/generic",
        val="mini_val",
        categories=("hand",),
        caption_prompts={
            "hand": CategoryText("hand", prefix=" ", suffix=" of a person"),
        },
    ),
    OdinwDataset(
        "EgoHands_specific",
        folder="EgoHands/specific",
        val="mini_val",
        categories=("myleft", "myright", "yourleft", "yourright"),
    ),
    OdinwDataset(
        "HardHatWorkers_raw",
        folder="HardHatWorkers/raw",
        categories=("head", "helmet", "person"),
    ),
    OdinwDataset(
        "MaskWearing_raw",
        folder="MaskWearing/raw",
        categories=("mask", "no-mask"),
    ),
    OdinwDataset(
        "MountainDewCommercial",
        folder="MountainDewCommercial",
        categories=("bottle",),
    ),
    OdinwDataset(
        "NorthAmericaMushrooms_North_American_Mushrooms.v1-416x416.coco",
        folder="NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
        categories=("flat mushroom", "yellow mushroom"),
    ),
    OdinwDataset(
        "OxfordPets_by-breed",
        folder="OxfordPets/by-breed",
        val="mini_val",
        categories=(
            "cat-Abyssinian", "cat-Bengal", "cat-Birman", "cat-Bombay", "cat-British_Shorthair",
            "cat-Egyptian_Mau", "cat-Maine_Coon", "cat-Persian", "cat-Ragdoll", "cat-Russian_Blue",
            "cat-Siamese", "cat-Sphynx", "dog-american_bulldog", "dog-american_pit_bull_terrier",
            "dog-basset_hound", "dog-beagle", "dog-boxer", "dog-chihuahua", "dog-english_cocker_spaniel",
            "dog-english_setter", "dog-german_shorthaired", "dog-great_pyrenees", "dog-havanese",
            "dog-japanese_chin", "dog-keeshond", "dog-leonberger", "dog-miniature_pinscher", "dog-newfoundland",
            "dog-pomeranian", "dog-pug", "dog-saint_bernard", "dog-samoyed", "dog-scottish_terrier",
            "dog-shiba_inu", "dog-staffordshire_bull_terrier", "dog-wheaten_terrier", "dog-yorkshire_terrier",
        ),
    ),
    OdinwDataset(
        "OxfordPets_by-species",
        folder="OxfordPets/by-species",
        val="mini_val",
        categories=("cat", "dog"),
    ),
    OdinwDataset(
        "PKLot_640",
        folder="PKLot/640",
        val="mini_val",
        categories=("space-empty", "space-occupied"),
    ),
    OdinwDataset(
        "Packages_Raw",
        folder="Packages/Raw",
        categories=("package",),
        caption_prompts={
            "package": CategoryText("package", prefix="there is a ", suffix=" on the porch"),
        },
    ),
    OdinwDataset(
        "PascalVOC",
        folder="PascalVOC",
        test="valid",
        categories=(
            "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
            "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
            "tvmonitor",
        ),
    ),
    OdinwDataset(
        "Raccoon_Raccoon.v2-raw.coco",
        folder="Raccoon/Raccoon.v2-raw.coco",
        categories=("raccoon",),
    ),
    OdinwDataset(
        "ShellfishOpenImages_raw",
        folder="ShellfishOpenImages/raw",
        categories=("Crab", "Lobster", "Shrimp"),
    ),
    OdinwDataset(
        "ThermalCheetah",
        folder="ThermalCheetah",
        categories=("cheetah", "human"),
    ),
    OdinwDataset(
        "UnoCards_raw",
        folder="UnoCards/raw",
        val="mini_val",
        categories=("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14"),
    ),
    OdinwDataset(
        "VehiclesOpenImages_416x416",
        folder="VehiclesOpenImages/416x416",
        val="mini_val",
        categories=("Ambulance", "Bus", "Car", "Motorcycle", "Truck"),
    ),
    OdinwDataset(
        "WildfireSmoke",
        folder="WildfireSmoke",
        categories=("smoke",),
    ),
    OdinwDataset(
        "boggleBoards_416x416AutoOrient_export_",
        folder="boggleBoards/416x416AutoOrient/export",
        val="val", export=True,
        categories=(
            "Q", "a", "an", "b", "c", "d", "e", "er", "f", "g", "h", "he", "i", "in", "j", "k", "l", "m", "n",
            "o", "o ", "p", "q", "qu", "r", "s", "t", "t\\", "th", "u", "v", "w", "wild", "x", "y", "z",
        ),
    ),
    OdinwDataset(
        "brackishUnderwater_960x540",
        folder="brackishUnderwater/960x540",
        val="mini_val",
        categories=("crab", "fish", "jellyfish", "shrimp", "small_fish", "starfish"),
    ),
    OdinwDataset(
        "dice_mediumColor_export",
        folder="dice/mediumColor/export",
        val="val", export=True,
        categories=("1", "2", "3", "4", "5", "6"),
    ),
    OdinwDataset(
        "openPoetryVision_512x512",
        folder="openPoetryVision/512x512",
        val="mini_val",
        categories=(
            "American Typewriter", "Andale Mono", "Apple Chancery", "Arial", "Avenir", "Baskerville",
            "Big Caslon", "Bradley Hand", "Brush Script MT", "Chalkboard", "Comic Sans MS", "Copperplate",
            "Courier", "Didot", "Futura", "Geneva", "Georgia", "Gill Sans", "Helvetica", "Herculanum", "Impact",
            "Kefa", "Lucida Grande", "Luminari", "Marker Felt", "Menlo", "Monaco", "Noteworthy", "Optima",
            "PT Sans", "PT Serif", "Palatino", "Papyrus", "Phosphate", "Rockwell", "SF Pro", "SignPainter",
            "Skia", "Snell Roundhand", "Tahoma", "Times New Roman", "Trebuchet MS", "Verdana",
        ),
    ),
    OdinwDataset(
        "pistols_export",
        folder="pistols/export",
        val="val", export=True,
        categories=("pistol",),
    ),
    OdinwDataset(
        "plantdoc_416x416",
        folder="plantdoc/416x416",
        categories=(
            "Apple Scab Leaf", "Apple leaf", "Apple rust leaf", "Bell_pepper leaf", "Bell_pepper leaf spot",
            "Blueberry leaf", "Cherry leaf", "Corn Gray leaf spot", "Corn leaf blight", "Corn rust leaf",
            "Peach leaf", "Potato leaf", "Potato leaf early blight", "Potato leaf late blight",
            "Raspberry leaf", "Soyabean leaf", "Soybean leaf", "Squash Powdery mildew leaf", "Strawberry leaf",
            "Tomato Early blight leaf", "Tomato Septoria leaf spot", "Tomato leaf",
            "Tomato leaf bacterial spot", "Tomato leaf late blight", "Tomato leaf mosaic virus",
            "Tomato leaf yellow virus", "Tomato mold leaf", "Tomato two spotted spider mites leaf",
            "grape leaf", "grape leaf black rot",
        ),
    ),
    OdinwDataset(
        "pothole",
        folder="pothole",
        categories=("pothole",),
        caption_prompts={
            "pothole": CategoryText("holes", prefix="there are some ", suffix=" on the road"),
        },
    ),
    OdinwDataset(
        "selfdrivingCar_fixedLarge_export_",
        folder="selfdrivingCar/fixedLarge/export",
        val="val", export=True,
        categories=(
            "biker", "car", "pedestrian", "trafficLight", "trafficLight-Green", "trafficLight-GreenLeft",
            "trafficLight-Red", "trafficLight-RedLeft", "trafficLight-Yellow", "trafficLight-YellowLeft",
            "truck",
        ),
    ),
    OdinwDataset(
        "thermalDogsAndPeople",
        folder="thermalDogsAndPeople",
        categories=("dog", "person"),
    ),
    OdinwDataset(
        "websiteScreenshots",
        folder="websiteScreenshots",
        val="mini_val",
        categories=("button", "field", "heading", "iframe", "image", "label", "link", "text"),
    ),
)

# The 13 data sets of configs/odinw_13 (the GLIP paper's ODinW); their configs set no caption
# prompts, and name two data sets' categories differently from the 35-suite configs.
ODINW_13_NAMES = (
    "AerialMaritimeDrone_large", "Aquarium_Aquarium_Combined.v2-raw-1024.coco", "CottontailRabbits",
    "EgoHands_generic", "NorthAmericaMushrooms_North_American_Mushrooms.v1-416x416.coco", "Packages_Raw",
    "PascalVOC", "pistols_export", "pothole", "Raccoon_Raccoon.v2-raw.coco", "ShellfishOpenImages_raw",
    "thermalDogsAndPeople", "VehiclesOpenImages_416x416",
)
ODINW_13_CATEGORIES = {
    "CottontailRabbits": ("Cottontail-Rabbit",),
    "NorthAmericaMushrooms_North_American_Mushrooms.v1-416x416.coco": ("CoW", "chanterelle"),
}
ODINW_13: tuple[OdinwDataset, ...] = tuple(
    dataclasses.replace(dataset, categories=ODINW_13_CATEGORIES.get(dataset.name, dataset.categories),
                        caption_prompts={})
    for name in ODINW_13_NAMES
    for dataset in ODINW_35
    if dataset.name == name
)
SUITES: dict[str, tuple[OdinwDataset, ...]] = {"13": ODINW_13, "35": ODINW_35}


@dataclass
class OdinwEvaluation:
    """Per data set metrics, their mean over the evaluated data sets, and the failures."""

    metrics: dict[str, float]
    datasets: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    summary: str = ""


def select_datasets(suite: str, names: Sequence[str] | None = None) -> tuple[OdinwDataset, ...]:
    """The data sets of ``suite`` ("13" or "35"), or those of them named in ``names``."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {suite!r}")
    datasets = SUITES[suite]
    if not names:
        return datasets
    by_name = {dataset.name: dataset for dataset in datasets}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"--datasets: {', '.join(map(repr, unknown))} not in the ODinW-{suite} suite "
                         f"(one of: {', '.join(by_name)})")
    return tuple(by_name[name] for name in names)


def resolve_root(root: str | Path) -> Path:
    """The folder holding the data set folders: ``root`` or, if it has one, ``root/odinw``
    (the official ``DATASET`` folder)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ODinW root {root} is not a folder")
    return root / "odinw" if (root / "odinw").is_dir() else root


def _names_a_category(key: str, dataset: OdinwDataset) -> bool:
    return any(key in (name, clean_name(name)) for name in dataset.categories)


def dataset_prompts(dataset: OdinwDataset, prompts: Mapping[str, CategoryText] | None) -> dict[str, CategoryText]:
    """The official caption prompts of ``dataset``, overridden by the user's prompts that name one
    of its categories."""
    merged = dict(dataset.caption_prompts)
    merged.update((key, text) for key, text in (prompts or {}).items() if _names_a_category(key, dataset))
    return merged


def _mean_defined(values: Sequence[float]) -> float:
    """Mean of the defined values (pycocotools gives -1 where, e.g., a data set has no small
    objects); -1 when none is defined, NaN without values."""
    if not values:
        return math.nan
    defined = [value for value in values if value > -1]
    return sum(defined) / len(defined) if defined else -1.0


def summary_table(datasets: Mapping[str, Mapping[str, float]], failed: Mapping[str, str],
                  mean: Mapping[str, float], title: str) -> str:
    """A markdown table of AP and AP50 per data set and their mean."""
    lines = [f"# {title}", "", "| data set | AP | AP50 |", "|---|---|---|"]
    for name, metrics in datasets.items():
        lines.append(f"| {name} | {metrics['AP']:.4f} | {metrics['AP50']:.4f} |")
    for name, error in failed.items():
        lines.append(f"| {name} | failed: {error} | |")
    lines.append(f"| **average ({len(datasets)})** | {mean['AP']:.4f} | {mean['AP50']:.4f} |")
    return "\n".join(lines) + "\n"


def evaluate_odinw(
    model,
    root: str | Path,
    out: str | Path,
    *,
    suite: str = "13",
    datasets: Sequence[str] | None = None,
    split: str = "val",
    prompts: Mapping[str, CategoryText] | None = None,
    batch_size: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
    resume: bool = False,
    progress: bool = True,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> OdinwEvaluation | None:
    """Evaluate ``model`` on every data set of an ODinW suite; write ``out/``.

    Args:
        model: a :class:`glip.GLIP`.
        root: the folder holding the data set folders (or its parent with an ``odinw`` folder).
        out: output folder (one sub-folder per data set, ``metrics.json``, ``summary.md``).
        suite: "13" or "35".
        datasets: evaluate only these data sets of the suite.
        split: "val" (the split of the official configs) or "test".
        prompts: descriptive prompts per category name, used in every data set with such a category.
        batch_size, min_size, max_size: as ``glip eval coco`` (sizes default to the model config's).
        resume: continue an interrupted suite: finished data sets are read back, the others resume
            from their partial results.
        progress: show progress bars.
        save_every: batches between partial saves.

    Returns:
        The suite's evaluation on process 0 (``failed`` lists the data sets that could not be
        evaluated); None on the other processes of a distributed run.
    """
    selected = select_datasets(suite, datasets)
    root = resolve_root(root)
    out = Path(out)
    check_output_folder(out)
    unused = [key for key in (prompts or {}) if not any(_names_a_category(key, dataset) for dataset in selected)]
    if unused:
        raise ValueError(f"--prompts: no category of the selected data sets is named {', '.join(map(repr, unused))}")
    failed = _check_datasets(selected, root, split)
    digest = model_digest(model)
    results: dict[str, dict[str, float]] = {}
    for dataset in selected:
        if dataset.name in failed:
            continue
        annotation_file, image_dir = dataset.files(split)
        categories = [{"id": index + 1, "name": name} for index, name in enumerate(dataset.categories)]
        try:
            evaluation = evaluate_detection(
                model, root / annotation_file, root / image_dir, prompts=dataset_prompts(dataset, prompts),
                categories=categories, min_size=min_size, max_size=max_size, allow_untokenized=True,
                run=RunOptions(batch_size, out / dataset.name, resume, save_every, progress),
                protocol=f"odinw/{dataset.name}", model_fingerprint=digest,
            )
        except (ValueError, OSError) as error:
            failed[dataset.name] = str(error)
            logger.error("ODinW %s failed: %s", dataset.name, error)
            continue
        if evaluation is not None:
            results[dataset.name] = evaluation.metrics
            logger.info("ODinW %s: AP %.4f", dataset.name, evaluation.metrics["AP"])
    if process_group()[0] != 0:
        return None
    return _write_suite(out, f"ODinW-{suite} ({split} split)", {"suite": suite, "split": split}, results, failed)


def _check_datasets(datasets: Sequence[OdinwDataset], root: Path, split: str) -> dict[str, str]:
    """Data set -> error, for those whose annotation file is missing or broken or whose images are
    missing: found before any inference, rather than after the data sets before them."""
    failed = {}
    for dataset in datasets:
        annotation_file, image_dir = dataset.files(split)
        try:
            data = read_coco(root / annotation_file)
            paths = [root / image_dir / image["file_name"] for image in data["images"]]
            check_image_files(paths, root / annotation_file)
        except (ValueError, OSError) as error:
            failed[dataset.name] = str(error)
            logger.error("ODinW %s failed: %s", dataset.name, error)
    return failed


def _write_suite(out: Path, title: str, header: dict[str, Any], results: dict[str, dict[str, float]],
                 failed: dict[str, str]) -> OdinwEvaluation:
    """Write the suite's ``metrics.json`` (means over the data sets) and ``summary.md``."""
    mean = {name: _mean_defined([metrics[name] for metrics in results.values()]) for name in METRIC_NAMES}
    report: dict[str, Any] = {**header, **mean, "num_datasets": len(results), "datasets": results, "failed": failed}
    write_json_atomic(out / "metrics.json", report)
    table = summary_table(results, failed, mean, title)
    write_text_atomic(out / "summary.md", table)
    logger.info("\n%s", table)
    return OdinwEvaluation(mean, results, failed, table)
