"""Options are read against their field types, from the command line and from Python alike:
``tam.eci=False`` is off, ``tam.eci=maybe`` is refused in one line before a model loads."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from mmxai import cli
from mmxai.api import make_method
from mmxai.evaluation import NamedMetric
from mmxai.options import OptionError, describe, make_options
from mmxai.registry import manager


@dataclass
class Fields:
    flag: bool = True
    count: int = 3
    scale: float = 1.0
    name: str = "x"
    where: Path | None = None
    how: Literal["mean", "max"] = "mean"
    scales: tuple[float, ...] = (1.0,)
    pair: tuple[int, str] = (1, "a")
    layer: int | None = None
    table: dict[str, int] | None = None


def read(**options):
    return make_options("method", "demo", Fields, options)


@pytest.mark.parametrize("text", ["False", "false", "FALSE", "0", "no", "No", " false "])
def test_false_in_any_spelling_is_false(text):
    assert read(flag=text).flag is False


@pytest.mark.parametrize("text", ["True", "true", "1", "yes", "YES"])
def test_true_in_any_spelling_is_true(text):
    assert read(flag=text).flag is True


@pytest.mark.parametrize(("field", "value", "accepted"), [
    ("flag", "maybe", "true or false"),
    ("flag", "2", "true or false"),
    ("flag", 2, "true or false"),
    ("flag", "", "true or false"),
    ("count", "4.5", "a whole number"),
    ("count", "four", "a whole number"),
    ("count", True, "a whole number"),
    ("count", 4.5, "a whole number"),
    ("scale", "nan", "a finite number"),
    ("scale", "inf", "a finite number"),
    ("scale", float("-inf"), "a finite number"),
    ("scale", "1,5", "a finite number"),
    ("scale", False, "a finite number"),
    ("name", 5, "a string"),
    ("how", "median", "one of mean, max"),
    ("how", "Mean", "one of mean, max"),
    ("scales", "a,b", "comma-separated values, each a finite number"),
    ("scales", "[1, ", "comma-separated values"),
    ("pair", "1", "2 comma-separated values"),
    ("pair", "x,a", "2 comma-separated values"),
    ("layer", "last", "a whole number or none"),
    ("table", "{'a': 1}", "a JSON object"),
    ("table", '{"a": "one"}', "a JSON object"),
])
def test_a_value_that_does_not_fit_is_one_line_naming_option_value_and_type(field, value,
                                                                            accepted):
    with pytest.raises(OptionError) as caught:
        read(**{field: value})
    message = str(caught.value)
    assert "\n" not in message
    assert f"demo.{field}=" in message and accepted in message
    if isinstance(value, str) and value.strip():
        assert value.strip()[:10] in message


def test_values_are_converted_to_the_field_type():
    options = read(count="7", scale="0.25", where="a/b.json", how="max", scales="0.5,0.75,1",
                   pair="2, b", layer="-1", table='{"cat": 17}')
    assert options.count == 7 and options.scale == 0.25
    assert options.where == Path("a/b.json") and options.how == "max"
    assert options.scales == (0.5, 0.75, 1.0) and options.pair == (2, "b")
    assert options.layer == -1 and options.table == {"cat": 17}
    assert read(scales="[0.5, 1]").scales == (0.5, 1.0)
    assert read(scales="(0.5, 1)").scales == (0.5, 1.0)
    assert read(layer="None").layer is None and read(layer="null").layer is None
    assert read(count=4.0).count == 4 and read(scale=2).scale == 2.0
    assert read(scales=[1, 2]).scales == (1.0, 2.0)  # Python values are read the same way


def test_unknown_keys_list_the_known_ones():
    with pytest.raises(OptionError, match=r"'demo' has no option\(s\) bogus; options: count"):
        read(bogus=1)


def test_describe_says_what_a_type_accepts():
    assert describe(bool).startswith("true or false")
    assert describe(Literal["a", "b"]) == "one of a, b"
    assert describe(int | None) == "a whole number or none"


def test_every_registered_plugin_option_reads_its_own_default_back_as_text():
    """Every built-in option can be typed on the command line: its default, written as
    text, reads back to the default (so no field has a type the reader cannot parse)."""
    from dataclasses import fields

    def text(value):
        if isinstance(value, (tuple, list)):
            return ",".join(map(str, value))
        return "none" if value is None else str(value)

    kinds = {"methods": "method", "metrics": "metric"}
    checked = 0
    for kind, word in kinds.items():
        for name, cls in manager().items(kind).items():
            for field in fields(cls.Options):
                if field.default is dataclasses_missing() or not field.init:
                    continue
                options = make_options(word, name, cls.Options,
                                       {field.name: text(field.default)})
                assert getattr(options, field.name) == field.default, (name, field.name)
                checked += 1
    assert checked > 20


def dataclasses_missing():
    import dataclasses

    return dataclasses.MISSING


def test_tam_eci_false_is_off_through_the_api_and_the_compare_plan():
    assert make_method("tam", eci="False").options.eci is False
    assert make_method("tam", eci=False).options.eci is False
    assert make_method("tam").options.eci is True
    from mmxai.commands import compare

    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    args = parser.parse_args(["--model", "tiny:llava", "--dataset", "synthetic",
                              "--method", "tam", "--metric", "deletion",
                              "--option", "tam.eci=False", "--option", "deletion.steps=6",
                              "--option", "tam.relevance=input"])
    plan = compare.make_plan(args)
    assert plan.methods[0].options.eci is False
    assert plan.methods[0].options.relevance == "input"
    assert plan.metrics[0].metric.options.steps == 6


def test_metric_labels_use_the_values_as_read():
    deletion = manager().get("metrics", "deletion")
    assert (NamedMetric.make(deletion, {"steps": "6"}).label
            == NamedMetric.make(deletion, {"steps": 6}).label == "deletion[steps=6]")


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("option", "phrases"), [
    ("tam.eci=maybe", ["tam.eci='maybe'", "true or false"]),
    ("tam.kernel_size=3.5", ["tam.kernel_size='3.5'", "a whole number"]),
    ("tam.relevance=outputs", ["tam.relevance='outputs'", "one of output, input, reference"]),
    ("tam.bogus=1", ["'tam' has no option(s) bogus", "eci"]),
    ("deletion.steps=many", ["deletion.steps='many'", "a whole number"]),
    ("tam.eci", ["expected NAME.KEY=VALUE"]),
    ("testbed.dtype=float16", ["'testbed' is not run here"]),
])
def test_compare_refuses_a_bad_option_in_one_line_before_the_model_loads(option, phrases,
                                                                          capsys, tmp_path,
                                                                          monkeypatch):
    from mmxai.commands import compare

    def no_model(*_, **__):  # the options are checked before any model is opened
        raise AssertionError("the model was opened")

    monkeypatch.setattr(compare.Plan, "open", no_model)
    code, err = run_cli(capsys, "compare", "--method", "tam", "--metric", "deletion",
                        "--option", option, "--out", tmp_path / "out", "--limit", 1)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_an_option_given_twice_is_refused(capsys, tmp_path):
    code, err = run_cli(capsys, "compare", "--method", "tam", "--metric", "deletion",
                        "--option", "tam.eci=false", "--option", "tam.eci=true",
                        "--out", tmp_path / "out", "--limit", 1)
    assert code == 2 and "tam.eci is given twice" in err


def test_explain_refuses_a_bad_option_before_loading(capsys, tmp_path, demo_image):
    code, err = run_cli(capsys, "explain", "no/such-model", demo_image, "--method", "tam",
                        "--option", "tam.eci=maybe", "--out", tmp_path / "out")
    assert code == 2 and "tam.eci='maybe'" in err and "Traceback" not in err


# -- the audit's findings: ranges before the model loads, bare dicts, the empty choice --------
@pytest.mark.parametrize(("kind", "name", "options", "message"), [
    ("methods", "tam", {"kernel_size": "-1"}, "kernel_size must be a positive odd number, got -1"),
    ("methods", "tam", {"kernel_size": "0"}, "kernel_size must be a positive odd number, got 0"),
    ("methods", "tam", {"kernel_size": "2"}, "kernel_size must be a positive odd number, got 2"),
    ("methods", "tam", {"kernel_size": "33"}, "kernel_size must be at most 31, got 33"),
    ("methods", "arc", {"kernel_size": "4"}, "kernel_size must be a positive odd number, got 4"),
    ("methods", "arc", {"k": "0"}, "k must be at least 1, got 0"),
    ("methods", "arc", {"p": "0"}, "p must be in (0, 1) (RBO persistence), got 0.0"),
    ("methods", "arc", {"p": "1"}, "p must be in (0, 1) (RBO persistence), got 1.0"),
    ("methods", "arc", {"base_weight": "-0.5"}, "base_weight must be at least 0, got -0.5"),
    ("methods", "msea", {"scales": ""}, "scales must name at least one scale"),
    ("methods", "msea", {"scales": "0.5,0"}, "every scale must be in (0, 1] (a share of the "
                                            "image's size; above 1 it would overflow a "
                                            "fixed-size model's canvas), got 0"),
    ("methods", "msea", {"scales": "-1,2"}, "got -1, 2"),
    ("methods", "msea-arc", {"scales": "2"}, "every scale must be in (0, 1]"),
    ("methods", "msea-arc", {"k": "0"}, "k must be at least 1, got 0"),
    ("methods", "msea-arc", {"kernel_size": "2"}, "kernel_size must be a positive odd number"),
    ("methods", "msea-tam", {"scales": "0"}, "every scale must be in (0, 1]"),
    ("methods", "msea-tam", {"kernel_size": "-3"}, "kernel_size must be a positive odd number"),
    ("methods", "random", {"seed": "-1"}, "seed must be at least 0, got -1"),
    ("metrics", "deletion", {"batch": "0"}, "batch must be at least 1, got 0"),
    ("metrics", "deletion", {"max_tokens": "-1"}, "max_tokens must be at least 0 (0: every "
                                                  "token), got -1"),
    ("metrics", "insertion", {"batch": "-2"}, "batch must be at least 1, got -2"),
    ("metrics", "randomisation", {"max_tokens": "-1"}, "max_tokens must be at least 0 (0: "
                                                       "every token), got -1"),
])
def test_option_ranges_of_every_plugin_are_checked_by_its_options(kind, name, options, message):
    cls = manager().get(kind, name)
    with pytest.raises(OptionError) as caught:
        cls(**options)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{kind[:-1]} {name!r}: "), text
    assert message in text, text


@pytest.mark.parametrize(("name", "options"), [
    ("tam", {"kernel_size": 1}), ("tam", {"kernel_size": 31}), ("arc", {"p": 0.5, "k": 1}),
    ("msea", {"scales": "0.25,1"}), ("msea-arc", {"scales": "1", "kernel_size": 5}),
    ("msea-tam", {"scales": "0.5", "kernel_size": 1}), ("random", {"seed": 0}),
])
def test_values_in_range_are_kept(name, options):
    method = manager().get("methods", name)(**options)
    for key, value in options.items():
        got = getattr(method.options, key)
        assert got == (tuple(float(v) for v in value.split(",")) if key == "scales" else value)


@pytest.mark.parametrize("option", ["tam.kernel_size=-1", "tam.kernel_size=2",
                                    "msea.scales=0", "arc.p=1"])
def test_explain_refuses_an_option_out_of_range_before_loading(option, capsys, tmp_path,
                                                               demo_image, monkeypatch):
    from mmxai.commands import explain

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(explain, "open_model", refuse)
    method = option.split(".")[0]
    code, err = run_cli(capsys, "explain", "no/such-model", demo_image, "--method", method,
                        "--option", option, "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: method {method!r}: "), lines[0]


@dataclass
class Loose:
    table: dict = None  # type: ignore[assignment]
    items: list = None  # type: ignore[assignment]
    pair: tuple = ()
    baseline: Literal["", "blur", "mean"] = ""


def test_a_bare_dict_list_or_tuple_reads_json_and_commas():
    options = make_options("method", "loose", Loose, {"table": '{"a": 1}', "items": "[1, 2]",
                                                      "pair": "a,b"})
    assert options.table == {"a": 1} and options.items == [1, 2] and options.pair == ("a", "b")
    assert make_options("method", "loose", Loose, {"table": {"b": [2]}}).table == {"b": [2]}
    with pytest.raises(OptionError, match=r"^option loose.table='\[1\]': expected a JSON "
                                          r"object of any value -> any value$"):
        make_options("method", "loose", Loose, {"table": "[1]"})


def test_an_empty_literal_choice_is_shown_quoted():
    assert describe(Literal["", "blur", "mean"]) == "one of '', blur, mean"
    with pytest.raises(OptionError) as caught:
        make_options("metric", "deletion", manager().get("metrics", "deletion").Options,
                     {"baseline": "white"})
    assert str(caught.value) == ("option deletion.baseline='white': expected one of '', blur, "
                                 "mean, black")
    assert make_options("method", "loose", Loose, {"baseline": ""}).baseline == ""


def test_a_json_object_option_with_a_key_given_twice_is_refused():
    with pytest.raises(OptionError, match="a JSON object"):
        read(table='{"dog": 18, "dog": 1}')
