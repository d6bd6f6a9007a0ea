"""Category names and evaluation prompts: official cleaning, caption format, chunking, bad names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glip.evaluation.prompts import (
    CategoryText,
    build_category_prompts,
    category_texts,
    clean_name,
    read_prompts_file,
)
from glip.processing import default_offline_vocab_dir, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_offline_vocab_dir())


def test_clean_name_follows_the_official_function() -> None:
    assert clean_name("traffic_light") == "traffic light"
    assert clean_name("bow_(decorative_ribbons)") == "bow "  # the trailing space stays, as officially
    assert clean_name("a_(b)_c_(d)") == "a "  # greedy: from the first "(" to the last ")"
    assert clean_name("Cottontail-Rabbit") == "Cottontail-Rabbit"  # case and hyphens are left to the tokenizer
    assert clean_name("  ") == " "


def test_prompt_is_the_official_caption_with_global_labels(tokenizer) -> None:
    texts = category_texts(["person", "traffic_light", "bow_(decorative_ribbons)"])
    [prompt] = build_category_prompts(texts, tokenizer, 256)
    assert prompt.caption == "person. traffic light. bow "
    assert [prompt.caption[b:e] for [(b, e)] in prompt.spans] == ["person", "traffic light", "bow "]
    assert prompt.label_ids == [1, 2, 3]
    assert prompt.phrases == ["person", "traffic light", "bow"]
    assert (prompt.positive_map.sum(-1) > 0.99).all()


def test_chunks_cover_every_category_once_and_fit_the_token_limit(tokenizer) -> None:
    names = [f"striped_wooden_object_number_{index}" for index in range(120)]
    texts = category_texts(names)
    by_count = build_category_prompts(texts, tokenizer, 256, 40)
    by_tokens = build_category_prompts(texts, tokenizer, 256, None)
    for prompts in (by_count, by_tokens):
        labels = [label for prompt in prompts for label in prompt.label_ids]
        assert labels == list(range(1, 121))
        for prompt in prompts:
            assert len(tokenizer(prompt.caption)["input_ids"]) <= 256
            for label, phrase in zip(prompt.label_ids, prompt.phrases):
                assert phrase == clean_name(names[label - 1]).strip()
    assert [len(prompt.label_ids) for prompt in by_count] == [40, 40, 40]
    assert len(by_tokens) > 1  # 120 names of 8 tokens do not fit 256 tokens


def test_custom_prompts_score_only_the_name(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"pothole": {"prefix": "there are some ", "name": "holes", "suffix": " on the road"},
                                "traffic_light": "a lamp that controls traffic"}))
    prompts = read_prompts_file(path)
    texts = category_texts(["pothole", "traffic_light", "dog"], prompts)
    [prompt] = build_category_prompts(texts, tokenizer, 256)
    assert prompt.caption == "there are some holes on the road. a lamp that controls traffic. dog"
    assert [prompt.caption[b:e] for [(b, e)] in prompt.spans] == ["holes", "a lamp that controls traffic", "dog"]
    # Keys may use the cleaned name too.
    assert category_texts(["traffic_light"], {"traffic light": CategoryText("signal")}) == [CategoryText("signal")]


def test_bad_names_and_prompt_files_are_named(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"category '\(unknown\)'.*has no token"):
        build_category_prompts(category_texts(["dog", "(unknown)"]), tokenizer, 256, names=["dog", "(unknown)"])
    kept = build_category_prompts(category_texts(["  ", "dog"]), tokenizer, 256, allow_untokenized=True)
    assert kept[0].caption == " . dog" and not kept[0].positive_map[0].any()
    with pytest.raises(ValueError, match="no category is named 'cta'"):
        category_texts(["cat"], {"cta": CategoryText("cat")}, "p.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"cat": 3}')
    with pytest.raises(ValueError, match=r"bad.json: 'cat'"):
        read_prompts_file(bad)
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="cannot read prompts file .*bad.json"):
        read_prompts_file(bad)
    with pytest.raises(ValueError, match="alone needs"):
        build_category_prompts([CategoryText("word " * 300)], tokenizer, 256)
