"""Hostile input to the Python API (``mmxai.api``): every mistake is one
:class:`~mmxai.errors.MMXAIError` line naming the argument and the cause, raised before the
model loads or generates where it can be, and nothing is silently dropped or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_attribution import PROMPT, image

from mmxai import api, hub
from mmxai.errors import InputError, MMXAIError, UnsupportedModelError
from mmxai.options import OptionError
from mmxai.registry import manager


def tam_class():
    return manager().get("methods", "tam")


@pytest.fixture
def model(tiny_model):
    return tiny_model("llava")


@pytest.fixture
def no_generation(monkeypatch):
    """Fails the test if the API gets as far as generating."""
    def refuse(*args, **kwargs):
        raise AssertionError("generated before the input was checked")

    monkeypatch.setattr(api, "generate_trace", refuse)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the API gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("loaded a model before the input was checked")

    monkeypatch.setattr(api, "load_model", refuse)


def one_line(caught: pytest.ExceptionInfo) -> str:
    text = str(caught.value)
    assert text and "\n" not in text, text
    assert isinstance(caught.value, MMXAIError)
    return text


# -- finding 1: options with a Method instance ---------------------------------------------
INSTANCE = ("method 'tam': options eci given with a Method instance, which is already "
            "configured; pass the name 'tam' with the options, or build the instance with them")


def test_options_given_with_an_instance_are_refused_not_dropped(model, no_generation):
    with pytest.raises(OptionError) as caught:
        api.explain(model, image(), PROMPT, tam_class()(), eci=False)
    assert one_line(caught) == INSTANCE
    with pytest.raises(OptionError) as caught:
        api.make_method(tam_class()(), eci=False)
    assert one_line(caught) == INSTANCE
    with pytest.raises(OptionError) as caught:
        api.explain_many(model, image(), PROMPT, [tam_class()()],
                         method_options={"tam": {"eci": False}})
    assert one_line(caught) == INSTANCE


def test_an_instance_without_options_and_a_class_with_options_are_taken():
    configured = tam_class()(eci=False)
    assert api.make_method(configured) is configured
    assert api.make_method(tam_class(), eci=False).options.eci is False


# -- finding 2 and 11: method_options for methods not run; a single method name ----------------
@pytest.mark.parametrize(("options", "message"), [
    ({"random": {"seed": 1}}, "method_options: 'random' not run here: no method of this run has "
                              "that name (options apply to: tam)"),
    ({"nosuch": {}}, "method_options: 'nosuch' not run here: no method of this run has that "
                     "name (options apply to: tam)"),
    ({"tam": "eci=false"}, "method_options['tam']: expected a dict of option -> value, got str"),
    ([("tam", {})], "method_options: expected a dict of method name -> options dict, got list"),
])
def test_method_options_that_would_be_ignored_are_refused(options, message, model,
                                                          no_generation):
    with pytest.raises(OptionError) as caught:
        api.explain_many(model, image(), PROMPT, ["tam"], method_options=options)
    assert one_line(caught) == message


@pytest.mark.parametrize(("methods", "message"), [
    ([], "methods: none given; expected at least one method name or instance"),
    (5, "methods: expected a method name, a Method instance or a list of them, got int"),
    ([5], "method: expected a method name or a Method instance, got int"),
])
def test_no_method_or_a_method_of_the_wrong_type_is_refused(methods, message, model,
                                                           no_generation):
    with pytest.raises(InputError) as caught:
        api.explain_many(model, image(), PROMPT, methods)
    assert one_line(caught) == message


def test_a_single_method_name_is_one_method_not_its_letters(model):
    results = api.explain_many(model, image(), PROMPT, "centre", max_new_tokens=2)
    assert list(results) == ["centre"]
    assert results["centre"].maps.shape[0] == results["centre"].trace.n_generated


# -- finding 3: images -------------------------------------------------------------------------
EXPECTED = "a path, a PIL image or a uint8 numpy array"


@pytest.mark.parametrize(("images", "message"), [
    ([], f"images: none given (an empty list); expected at least one image: {EXPECTED}"),
    ((), f"images: none given (an empty list); expected at least one image: {EXPECTED}"),
    (None, f"images: expected an image ({EXPECTED}) or a list of them, got NoneType"),
    (123, f"images: expected an image ({EXPECTED}) or a list of them, got int"),
    ([123], "image: expected a path, a PIL image or a uint8 numpy array, got int"),
    (b"/tmp/x.png", "image: got bytes; pass a path as str or pathlib.Path (os.fsdecode(path)), "
                    "or file contents as a PIL image (PIL.Image.open(io.BytesIO(data)))"),
    ("", "image '': an empty path"),
    (np.zeros((8, 8, 3)), "numpy image: expected a uint8 array of shape (H, W), (H, W, 3) or "
                          "(H, W, 4), got float64 (8, 8, 3)"),
    (np.zeros((8, 8, 2), np.uint8), "numpy image: expected a uint8 array of shape (H, W), "
                                    "(H, W, 3) or (H, W, 4), got uint8 (8, 8, 2)"),
])
def test_no_image_or_an_image_of_the_wrong_type_is_one_line(images, message, model,
                                                            no_generation):
    with pytest.raises(InputError) as caught:
        api.explain(model, images, PROMPT)
    assert one_line(caught) == message


def test_a_uint8_rgb_array_is_read_as_the_same_image(model):
    pil = image()
    array = np.asarray(pil)
    assert array.dtype == np.uint8 and array.shape[2] == 3
    from_pil = api.explain(model, pil, PROMPT, "centre", max_new_tokens=2)
    from_array = api.explain(model, array, PROMPT, "centre", max_new_tokens=2)
    assert np.array_equal(from_pil.maps, from_array.maps)
    assert np.array_equal(np.asarray(api.load_image(array)), array)
    grey = np.full((20, 30), 77, np.uint8)
    assert np.asarray(api.load_image(grey)).tolist() == [[[77] * 3] * 30] * 20


def test_a_proc_file_is_not_called_empty(model, no_generation):
    if not Path("/proc/self/status").is_file():
        pytest.skip("no procfs here")
    with pytest.raises(InputError) as caught:
        api.explain(model, "/proc/self/status", PROMPT)
    text = one_line(caught)
    assert text.startswith("image '/proc/self/status': ") and "virtual file" in text, text
    assert "empty" not in text


# -- finding 4: token indices, before anything generates ---------------------------------------
@pytest.mark.parametrize(("tokens", "message"), [
    ([1.7], "tokens: 1.7 is not a token index (whole numbers in [0, answer length))"),
    ([True], "tokens: True is not a token index (whole numbers in [0, answer length))"),
    (["0"], "tokens: '0' is not a token index (whole numbers in [0, answer length))"),
    (["a"], "tokens: 'a' is not a token index (whole numbers in [0, answer length))"),
    (5, "tokens: expected a sequence of token indices in [0, answer length), got int"),
    ("0", "tokens: expected a sequence of token indices in [0, answer length), got str"),
    ([-1], "tokens: [-1] out of range (token indices count from 0, no wrapping from the end)"),
])
def test_bad_tokens_are_refused_before_generating(tokens, message, model, no_generation):
    with pytest.raises(InputError) as caught:
        api.explain(model, image(), PROMPT, tokens=tokens)
    assert one_line(caught) == message
    with pytest.raises(InputError) as caught:
        api.explain_many(model, image(), PROMPT, ["centre", "random"], tokens=tokens,
                         failures={})
    assert one_line(caught) == message


def test_tokens_past_the_answer_are_refused_once_it_is_known(model):
    with pytest.raises(InputError) as caught:
        api.explain_many(model, image(), PROMPT, ["centre"], max_new_tokens=2, tokens=[5],
                         generate_kwargs={"min_new_tokens": 2})
    assert one_line(caught) == ("tokens: [5] out of range (outside [0, 2): the answer has 2 "
                                "generated token(s))")


def test_tokens_from_a_generator_are_read_once_and_kept(model):
    result = api.explain(model, image(), PROMPT, "centre", max_new_tokens=2,
                         tokens=(t for t in [1, 0]))
    assert result.tokens == [1, 0] and result.maps.shape[0] == 2


# -- finding 5: max_new_tokens -----------------------------------------------------------------
@pytest.mark.parametrize(("value", "message"), [
    ("3", "max_new_tokens '3': expected a whole number from 1 to 4096, got str"),
    (2.5, "max_new_tokens 2.5: expected a whole number from 1 to 4096, got float"),
    (3.0, "max_new_tokens 3.0: expected a whole number from 1 to 4096, got float"),
    (True, "max_new_tokens True: expected a whole number from 1 to 4096, got bool"),
    (None, "max_new_tokens None: expected a whole number from 1 to 4096, got NoneType"),
    (0, "max_new_tokens 0: must be from 1 to 4096 (the number of tokens to generate and "
        "explain)"),
    (-1, "max_new_tokens -1: must be from 1 to 4096 (the number of tokens to generate and "
         "explain)"),
    (99999999999999999999, "max_new_tokens 99999999999999999999: must be from 1 to 4096 (the "
                           "number of tokens to generate and explain)"),
])
def test_max_new_tokens_must_be_a_whole_number_in_range(value, message, no_model_load):
    with pytest.raises(InputError) as caught:
        api.explain("some/model", image(), PROMPT, max_new_tokens=value)
    assert one_line(caught) == message


def test_max_new_tokens_takes_numpy_integers(model):
    assert api.check_max_new_tokens(np.int64(3)) == 3 and api.check_max_new_tokens(4096) == 4096


# -- finding 6: option ranges through the API are OptionErrors ---------------------------------
@pytest.mark.parametrize(("method", "options", "message"), [
    ("tam", {"kernel_size": -1}, "method 'tam': kernel_size must be a positive odd number, "
                                 "got -1"),
    ("tam", {"kernel_size": 10**9 + 1}, "method 'tam': kernel_size must be at most 31, got "
                                        "1000000001"),
    ("arc", {"p": 1}, "method 'arc': p must be in (0, 1) (RBO persistence), got 1.0"),
    ("msea", {"scales": ()}, "method 'msea': scales must name at least one scale"),
])
def test_an_option_out_of_range_is_an_option_error_not_a_value_error(method, options, message,
                                                                     model, no_generation):
    with pytest.raises(OptionError) as caught:
        api.explain(model, image(), PROMPT, method, **options)
    assert one_line(caught) == message


def test_a_decoder_layer_the_model_lacks_is_refused_before_generating(model, no_generation):
    with pytest.raises(OptionError) as caught:
        api.explain(model, image(), PROMPT, "logit-lens", layer=99)
    assert one_line(caught) == ("method 'logit-lens': decoder layer 99 is out of range: the "
                                "model has 2 decoder layers (0 to 1, or -2 to -1 from the end)")


def test_with_failures_a_missing_layer_fails_only_its_method(model):
    failures: dict[str, BaseException] = {}
    results = api.explain_many(model, image(), PROMPT, ["logit-lens", "gradcam", "centre"],
                               method_options={"logit-lens": {"layer": -3},
                                               "gradcam": {"layer": 99}},
                               max_new_tokens=2, failures=failures)
    assert list(results) == ["centre"]
    assert api.failure_message("logit-lens", failures["logit-lens"]) == (
        "method 'logit-lens' failed: decoder layer -3 is out of range: the model has 2 "
        "decoder layers (0 to 1, or -2 to -1 from the end)")
    assert api.failure_message("gradcam", failures["gradcam"]) == (
        "method 'gradcam' failed: gradcam.layer=99 is out of range: the model has 2 vision "
        "layers (0 to 1, or -2 to -1 from the end)")


# -- finding 8: model names and folders --------------------------------------------------------

@pytest.mark.parametrize(("spec", "cause"), [
    ("/nonexist/model", "no such folder"),
    ("./models/typo", "no such folder"),
    ("~/no-such-mmxai-model", "no such folder"),
    ("a/b/c", "no such folder"),
    ("models/typo", "no such folder here, and the Hugging Face hub cannot be reached to "
                    "download it as a hub name ([Errno -2] Name or service not known); check "
                    "the name or the network, or set HF_HUB_OFFLINE=1 to use the cache only"),
])
def test_a_missing_folder_or_unreachable_hub_name_is_one_line(spec, cause, unreachable_hub,
                                                              no_model_load):
    with pytest.raises(UnsupportedModelError) as caught:
        api.explain(spec, image(), PROMPT)
    assert one_line(caught) == f"cannot load model {spec!r}: {cause}"
    assert len(unreachable_hub) <= 1  # asked once, never retried


def test_offline_a_hub_name_not_in_the_cache_is_one_line(monkeypatch, no_model_load):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_cached_config", lambda repo_id: None)
    with pytest.raises(UnsupportedModelError) as caught:
        api.explain("some-org/some-model", image(), PROMPT)
    assert one_line(caught) == (
        "cannot load model 'some-org/some-model': no such folder here, and it is not in the "
        "Hugging Face cache (HF_HUB_OFFLINE is set, so hub names are not downloaded)")


def test_an_architectures_string_is_named_as_such(tiny_dir, tmp_path, no_model_load):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_dir("llava"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = "LlavaForConditionalGeneration"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as caught:
        api.explain(str(folder), image(), PROMPT)
    assert one_line(caught) == (
        f"cannot load model {str(folder)!r}: config.json: \"architectures\" must be a list of "
        f"class names (e.g. [\"LlavaForConditionalGeneration\"]), got str "
        f"'LlavaForConditionalGeneration'")


def test_a_file_or_a_non_text_model_is_one_line(tiny_dir, no_model_load):
    config = tiny_dir("llava") / "config.json"
    with pytest.raises(UnsupportedModelError) as caught:
        api.explain(str(config), image(), PROMPT)
    assert one_line(caught) == (f"cannot load model {str(config)!r}: a file, not a folder "
                                f"(expected a folder saved with save_pretrained, or a hub name)")
    with pytest.raises(UnsupportedModelError) as caught:
        api.explain(5, image(), PROMPT)
    assert one_line(caught) == "model: expected a hub name or a folder (text or a path), got int"


def test_a_saved_folder_still_loads_through_the_api(tiny_dir):
    result = api.explain(str(tiny_dir("llava")), image(), PROMPT, "centre", max_new_tokens=2)
    assert result.maps.shape[0] == result.trace.n_generated


def test_a_cached_hub_model_loads_offline_when_the_hub_is_unreachable(monkeypatch, tiny_dir):
    """The one failed request does not stop a model already in the cache: it loads with the
    hub switched off for that load (no retries), and the switch is put back."""
    from huggingface_hub import constants

    folder = tiny_dir("llava")
    monkeypatch.setattr(hub, "_cached_config", lambda repo_id: str(folder / "config.json"))
    monkeypatch.setattr(hub, "probe", lambda repo_id: (_ for _ in ()).throw(OSError("down")))
    seen = {}

    def load(spec, **kwargs):
        seen["offline"] = constants.HF_HUB_OFFLINE
        raise OSError("stop here")

    monkeypatch.setattr(api, "load_model", load)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(UnsupportedModelError, match="^cannot load model 'org/name': stop here$"):
        api.explain("org/name", image(), PROMPT)
    assert seen == {"offline": True} and constants.HF_HUB_OFFLINE == before


def test_a_method_s_own_name_is_not_said_twice_in_its_failure():
    from mmxai.errors import InputError

    said = api.failure_message("occlusion", InputError("method 'occlusion': needs one image"))
    assert said == "method 'occlusion' failed: needs one image"
    other = api.failure_message("eagle", InputError("method 'occlusion': needs one image"))
    assert other == "method 'eagle' failed: method 'occlusion': needs one image"
