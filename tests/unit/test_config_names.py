"""Model and variant names are unique, checked by one helper that names each repeated one."""

import pytest

from quantserve.config import ConfigError, parse_config, require_unique


def model(name: str, variants: list[str]) -> dict:
    return {"name": name, "source": "x.gguf", "default_variant": variants[0],
            "variants": [{"name": v, "build": {"method": "onnx", "precision": "int4"}} for v in variants]}


def test_repeated_names_are_named_once_each():
    assert require_unique(["a", "b"], "names") == ["a", "b"]
    with pytest.raises(ValueError, match=r"^names: 'a', 'c' given more than once"):
        require_unique(["c", "a", "b", "a", "c", "c"], "names")


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ([model("m", ["a"]), model("m", ["b"])], "model names: 'm' given more than once"),
        ([model("m", ["a", "b", "a"])], "model 'm': variant names: 'a' given more than once"),
    ],
)
def test_the_config_refuses_repeated_model_and_variant_names(models, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({"models": models})
    assert parse_config({"models": [model("m", ["a", "b"]), model("n", ["a"])]}).model("n").variants[0].name == "a"
