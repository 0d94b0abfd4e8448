"""Loading checkpoints the project never saw (mmxai/loading.py): a folder saved the plain way
(the model's, the tokenizer's and the image processor's ``save_pretrained``; no
``processor_config.json``, no chat template) runs ``explain`` and ``compare`` with one
``note:`` line per thing filled in; ``--chat-template`` / ``chat_template=`` set the
template; a checkpoint that cannot run fails in one line before any sample; a hub name that
cannot be reached fails at once on every loading path."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

from mmxai import api, cli, loading
from mmxai.commands import compare as compare_cmd
from mmxai.commands import explain as explain_cmd
from mmxai.commands.tiny import find_family
from mmxai.errors import InputError, MMXAIError, UnsupportedModelError
from mmxai.evaluation import Reporter, ResultStore, RunSpec, Selection, Shard
from mmxai.model import load_model

PROMPT = "Describe the image."
#: What the templates of the tests write first: no family's template writes it.
SYSTEM_LINE = "SYSTEM: answer in one word.\n"
#: A template of our own, with LLaVA's image placeholder.
LLAVA_TEMPLATE = (
    SYSTEM_LINE + "{% for message in messages %}{{ message['role'] }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def save_plain(model, folder: Path) -> Path:
    """``model`` saved as a user of transformers would: weights and config, tokenizer and
    image processor, nothing else, and no chat template anywhere."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" is not the command's stderr
    try:
        model.hf.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
    model.tokenizer.save_pretrained(folder)
    model.processor.image_processor.save_pretrained(folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    assert not (folder / "processor_config.json").exists()
    return folder


@pytest.fixture(scope="module")
def plain_dir(tiny_model, tmp_path_factory):
    """``plain_dir(family)``: the family's tiny model saved the plain way, once per module.
    Do not write into it (copy it first)."""
    saved: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in saved:
            saved[family] = save_plain(tiny_model(family),
                                       tmp_path_factory.mktemp(f"plain-{family}"))
        return saved[family]

    return get


def template_for(family: str) -> str:
    """The family's default template with :data:`SYSTEM_LINE` first: another template that
    writes the family's own image placeholders (what its processor expands)."""
    default = find_family(family).default_chat_template
    if default is None:
        pytest.fail(f"the {family} adapter sets no default_chat_template")
    # written by an expression, which a {%- right after it does not trim
    return "{{ " + repr(SYSTEM_LINE) + " }}" + default


def notes(err: str) -> list[str]:
    """stderr's lines, each checked to be a note: nothing else may be said."""
    found = lines_of(err)
    assert all(line.startswith("note: ") for line in found), err
    assert len(found) == len(set(found)), f"a note said twice: {err}"
    return found


def template_note(folder: Path, family: str) -> str:
    return f"note: {folder}: no chat template: using the {family} adapter's default ("


# -- a plain folder runs --------------------------------------------------------------------
def test_a_plain_folder_runs_explain_with_one_note_per_thing_filled(tiny_family, plain_dir,
                                                                      demo_image, tmp_path,
                                                                      capsys):
    folder = plain_dir(tiny_family)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "explain", folder, demo_image, "--method", "tam",
                                "--max-new-tokens", 2, "--device", "cpu", "--out", out)
    assert code == 0, err
    said = notes(err)
    assert [line for line in said if line.startswith(template_note(folder, tiny_family))]
    assert all(line.endswith("--chat-template FILE sets another") or
               line.endswith("from the model config") for line in said), said
    run = json.loads((out / "run.json").read_text())
    assert run["tokens"] and run["chat_template"] is None and not run["failed"]


def test_a_plain_folder_runs_compare_without_a_failed_sample(tiny_family, plain_dir, tmp_path,
                                                             capsys):
    folder = plain_dir(tiny_family)
    code, stdout, err = run_cli(capsys, "compare", "--dataset", "synthetic", "--limit", 2,
                                "--model", folder, "--out", tmp_path / "out", "--device", "cpu",
                                # a random model may end its answer at once
                                "--min-new-tokens", 2, "--bootstrap", 10, "--no-progress")
    assert code == 0, err
    assert [line for line in notes(err) if line.startswith(template_note(folder, tiny_family))]
    # the summary names the model by its label: a local folder's own name
    assert f"{folder.name}: 2 samples, 2 evaluated now, 0 already stored, 0 failed (0 results)" \
        in stdout


def test_llava_notes_say_what_was_filled_and_the_default_is_llava_1_5s(plain_dir, tiny_dir,
                                                                        demo_image, tmp_path,
                                                                        capsys):
    folder = plain_dir("llava")
    code, _, err = run_cli(capsys, "explain", folder, demo_image, "--method", "tam",
                           "--max-new-tokens", 1, "--device", "cpu", "--out", tmp_path / "o")
    assert code == 0, err
    assert notes(err) == [
        f"note: {folder}: no processor_config.json: filled patch_size=14, "
        "vision_feature_select_strategy=default, num_additional_image_tokens=1 from the "
        "model config",
        f"note: {folder}: no chat template: using the llava adapter's default "
        "(USER: <image>\\n{prompt} ASSISTANT:); --chat-template FILE sets another",
    ]
    with pytest.warns(loading.LoadNote):
        plain = load_model(str(folder))
    assert plain.chat_text(PROMPT, 1) == f"USER: <image>\n{PROMPT} ASSISTANT:"
    # the full folder (processor_config.json, llava-hf's template) reads the image the same
    full = load_model(str(tiny_dir("llava")))
    image = loading.synthetic_image()
    a, b = plain.build_inputs([image], PROMPT), full.build_inputs([image], PROMPT)
    assert a.input_ids.tolist() == b.input_ids.tolist()
    assert [g.shape for g in a.grids] == [g.shape for g in b.grids] == [(4, 4)]


def test_internvl_gets_its_tokens_per_tile_from_the_config(plain_dir):
    folder = plain_dir("internvl")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = load_model(str(folder))
    said = [str(w.message) for w in seen if issubclass(w.category, loading.LoadNote)]
    assert said == model.load_notes and len(said) == 2
    assert said[0] == (f"{folder}: no processor_config.json: filled image_seq_length=4 from "
                       "the model config")
    assert model.processor.image_seq_length == 4


def test_a_full_folder_loads_without_a_note(tiny_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", loading.LoadNote)
        assert load_model(str(tiny_dir("llava"))).load_notes == []


# -- the chat template, as asked ------------------------------------------------------------
def test_chat_template_file_changes_the_prompt_in_explain(tiny_family, plain_dir, demo_image,
                                                          tmp_path, capsys, monkeypatch):
    folder = plain_dir(tiny_family)
    template = tmp_path / "template.jinja"
    template.write_text(template_for(tiny_family), encoding="utf-8")
    adapter = find_family(tiny_family)
    texts = []
    real = adapter.chat_text
    monkeypatch.setattr(adapter, "chat_text",
                        lambda self, prompt, n: texts.append(real(self, prompt, n)) or texts[-1])
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "explain", folder, demo_image, "--method", "tam",
                           "--max-new-tokens", 1, "--device", "cpu", "--out", out,
                           "--chat-template", template)
    assert code == 0, err
    assert not [line for line in notes(err) if "chat template" in line]
    assert texts and all(text.startswith(SYSTEM_LINE) for text in texts)
    assert any(PROMPT in text for text in texts)
    assert json.loads((out / "run.json").read_text())["chat_template"] == str(template)


def test_chat_template_in_compare_is_part_of_the_runs_identity(plain_dir, tmp_path, capsys):
    folder = plain_dir("llava")
    template = tmp_path / "template.jinja"
    template.write_text(LLAVA_TEMPLATE, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["compare", "--dataset", "synthetic", "--limit", 1, "--model", folder,
            "--method", "random", "--metric", "seconds-per-token", "--out", out,
            "--device", "cpu", "--bootstrap", 0, "--no-progress"]
    code, stdout, err = run_cli(capsys, *argv, "--chat-template", template)
    assert code == 0, err
    assert "0 failed" in stdout and not [line for line in notes(err) if "chat template" in line]
    code, stdout, err = run_cli(capsys, *argv)  # the default template now: not the stored rows
    assert code == 2 and "another chat_template" in lines_of(err)[-1]
    assert lines_of(err)[-1].startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize(("text", "cause"), [
    ("", "an empty chat template"),
    ("USER: <image> ASSISTANT:", "not a Jinja chat template"),
    ("{% for m in messages %}{{ m }}", "not a valid Jinja template (line 1:"),
])
def test_a_bad_chat_template_file_is_refused_before_loading(text, cause, plain_dir, demo_image,
                                                            tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the template was checked")

    monkeypatch.setattr(explain_cmd, "open_model", refuse)
    monkeypatch.setattr(compare_cmd, "open_model", refuse)
    template = tmp_path / "t.jinja"
    template.write_text(text, encoding="utf-8")
    folder = plain_dir("llava")
    for argv in (["explain", folder, demo_image, "--out", tmp_path / "o"],
                 ["compare", "--dataset", "synthetic", "--model", folder, "--out",
                  tmp_path / "c"]):
        for path, expected in ((template, cause), (tmp_path / "none.jinja", "no such file"),
                               (tmp_path, "a folder, not a chat template file")):
            code, _, err = run_cli(capsys, *argv, "--chat-template", path)
            assert code == 2 and len(lines_of(err)) == 1, err
            assert lines_of(err)[0].startswith(f"error: --chat-template {str(path)!r}: "
                                               f"{expected}"), err


def test_the_api_takes_a_chat_template_as_text_or_a_file(plain_dir, tmp_path):
    folder = plain_dir("llava")
    text = LLAVA_TEMPLATE
    (tmp_path / "t.jinja").write_text(text, encoding="utf-8")
    for given in (text, tmp_path / "t.jinja"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            model = api.open_pretrained(str(folder), chat_template=given)
        said = [str(w.message) for w in seen if issubclass(w.category, loading.LoadNote)]
        assert len(said) == 1 and "filled patch_size=14" in said[0]  # no template note
        assert model.chat_text(PROMPT, 1) == f"{SYSTEM_LINE}user: <image>\n{PROMPT}\nassistant:"


@pytest.mark.parametrize(("given", "cause"), [
    ("template.jinja", "chat_template: not a Jinja chat template (no {{ ... }} or {% ... %} "
                       "in it); to read one from a file, pass a pathlib.Path"),
    (42, "chat_template: expected a Jinja chat template as text or a path to a file holding "
         "one, got int"),
])
def test_the_api_refuses_a_chat_template_it_cannot_use_before_loading(given, cause, plain_dir,
                                                                      monkeypatch):
    from mmxai import hub

    monkeypatch.setattr(hub, "resolve", lambda spec: pytest.fail("resolved before checking"))
    for load in (api.open_pretrained, load_model):
        with pytest.raises(InputError) as caught:
            load(str(plain_dir("llava")), chat_template=given)
        assert str(caught.value) == cause


def test_a_family_without_a_default_template_says_how_to_give_one(plain_dir, monkeypatch):
    adapter = find_family("llava")
    monkeypatch.setattr(adapter, "default_chat_template", None)
    folder = plain_dir("llava")
    with pytest.raises(UnsupportedModelError) as caught:
        load_model(str(folder))
    assert str(caught.value) == (
        f"cannot load model {str(folder)!r}: it has no chat template and the llava adapter "
        "knows no default; give one with --chat-template FILE (chat_template= in Python)")


# -- a checkpoint that cannot run -----------------------------------------------------------
def break_folder(folder: Path, how: str) -> str:
    """Break the copy ``folder`` of a plain LLaVA folder; the start of the error it gives."""
    name = repr(str(folder))
    if how == "no weights":
        (folder / "model.safetensors").unlink()
        return f"cannot load model {name}: Error no file named model.safetensors"
    if how == "no tokenizer":
        for path in folder.glob("tokenizer*"):
            path.unlink()
        return f"cannot load model {name}: no tokenizer in the folder (none of tokenizer.json"
    if how == "no image processor":
        (folder / "preprocessor_config.json").unlink()
        return (f"cannot load model {name}: no image processor in the folder "
                "(preprocessor_config.json)")
    if how == "processor cannot run":  # 7-pixel patches: 64 image tokens for a 4x4 grid
        (folder / "processor_config.json").write_text(json.dumps({
            "processor_class": "LlavaProcessor", "patch_size": 7,
            "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}))
        return (f"cannot run model {name}: its processor or chat template fails on a 64x64 "
                "test image: 64 image tokens do not split into 1 grids of 4x4")
    config = json.loads((folder / "config.json").read_text())  # a layer the tower lacks
    config["vision_feature_layer"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    return f"cannot run model {name}: a forward pass on a 64x64 test image fails: IndexError"


@pytest.mark.parametrize("how", ["no weights", "no tokenizer", "no image processor",
                                 "processor cannot run", "model cannot run"])
def test_a_broken_folder_fails_in_one_line_before_any_sample(how, plain_dir, demo_image,
                                                             tmp_path, capsys, monkeypatch):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(plain_dir("llava"), folder)
    expected = break_folder(folder, how)

    def never(*args, **kwargs):
        raise AssertionError("a sample ran on a model that cannot run")

    monkeypatch.setattr(explain_cmd, "explain_many", never)
    monkeypatch.setattr(compare_cmd.Evaluator, "run", never)
    for argv in (["explain", folder, demo_image, "--out", tmp_path / "o", "--device", "cpu"],
                 ["compare", "--dataset", "synthetic", "--limit", 2, "--model", folder,
                  "--out", tmp_path / "c", "--device", "cpu", "--no-progress"]):
        code, _, err = run_cli(capsys, *argv)
        errors = [line for line in lines_of(err) if not line.startswith("note: ")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert errors[0].startswith(f"error: {expected}"), errors[0]


# -- the hub ------------------------------------------------------------------------------
def test_load_model_of_an_unknown_hub_name_fails_at_once_when_the_hub_is_unreachable(
        unreachable_hub, monkeypatch):
    import transformers

    def no_transformers(*args, **kwargs):
        raise AssertionError("transformers was asked (and would retry the hub)")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_transformers)
    adapter = find_family("llava")
    for load in (load_model, adapter.from_pretrained):
        start = time.monotonic()
        with pytest.raises(UnsupportedModelError) as caught:
            load("some-org/no-such-model")
        assert time.monotonic() - start < 5
        text = str(caught.value)
        assert "\n" not in text and isinstance(caught.value, MMXAIError)
        assert text.startswith("cannot load model 'some-org/no-such-model': no such folder "
                               "here, and the Hugging Face hub cannot be reached")
        assert "HF_HUB_OFFLINE=1" in text
    assert unreachable_hub == ["some-org/no-such-model"] * 2  # one request each, no retry


# -- compare's shards and workers -------------------------------------------------------------
class Notes(Reporter):
    def __init__(self) -> None:
        self.said: list[str] = []

    def note(self, text: str) -> None:
        self.said.append(text)


def test_load_notes_are_said_by_the_first_shard_only(plain_dir, tmp_path):
    folder = str(plain_dir("llava"))
    spec = RunSpec(Selection(models=(folder,), dataset="synthetic"), device="cpu",
                   out=tmp_path)
    said = {}
    for index in (1, 0):
        plan, reporter = compare_cmd.build_plan(spec), Notes()
        with ResultStore(tmp_path / f"{index}.sqlite") as store:
            plan.evaluator(store, Shard(index, 2), reporter)
            plan.open(folder)
        said[index] = reporter.said
    assert said[1] == [] and len(said[0]) == 2
    assert all(text.startswith(f"note: {folder}: ") for text in said[0])


def test_workers_are_handed_the_chat_template(plain_dir, tmp_path, capsys, monkeypatch):
    import pickle

    template = tmp_path / "t.jinja"
    template.write_text(LLAVA_TEMPLATE, encoding="utf-8")
    handed = []

    def run_workers(build, plan, *args):
        handed.append((pickle.loads(pickle.dumps(build)), plan.spec))
        raise MMXAIError("stop here")

    monkeypatch.setattr(compare_cmd.workers, "run_workers", run_workers)
    code, _, err = run_cli(capsys, "compare", "--dataset", "synthetic", "--limit", 2,
                           "--model", plain_dir("llava"), "--method", "random", "--metric",
                           "seconds-per-token", "--workers", 2, "--out", tmp_path / "out",
                           "--device", "cpu", "--chat-template", template)
    assert code == 2 and "stop here" in err
    (build, spec), = handed
    assert build(spec).chat_template == LLAVA_TEMPLATE  # what each worker's plan opens with


def test_transformers_own_template_tags_are_accepted():
    """LLaVA-OneVision's template marks the assistant's turn with transformers'
    {% generation %} tag, which plain Jinja does not know."""
    from mmxai.errors import InputError
    from mmxai.loading import check_template

    text = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
            "{{ m['content'] }}{% endgeneration %}{% endif %}{% endfor %}")
    assert check_template(text, "template") == text
    with pytest.raises(InputError, match="line 1"):
        check_template("{% for m in messages %}", "template")
