"""--device-map / --max-memory: a model split over devices by accelerate gives the maps of
the unsplit model, for every registered method.

This machine has no GPU, so the splits here are the ones a CPU can hold: blocks offloaded to
disk (weights on ``meta`` between forwards, loaded by accelerate's hooks for each forward),
chosen by hand so that the vision layer Grad-CAM hooks, the decoder layer LRP starts from,
the final norm the trace captures and the unembedding are all offloaded; and the split
accelerate chooses itself under a CPU budget (``max_memory``). Either way every block runs
under accelerate's hooks, beside ours (trace capture, leaf outputs, LRP's rules).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmxai import device_map as dm
from mmxai.api import explain_many
from mmxai.cli import main
from mmxai.commands.tiny import find_family
from mmxai.errors import InputError
from mmxai.model import Model, load_model
from mmxai.registry import manager
from mmxai.trace import Needs

PROMPT = "Describe the image."
N_TOKENS = 3
#: Options that set how many passes a costly method runs, made small (any method that has
#: them: integrated gradients' steps, LIME's samples, EAGLE's segments ...).
SMALL = {"steps": 2, "samples": 3, "segments": 6, "scales": (0.75, 1.0)}


def methods() -> dict[str, dict]:
    """Every registered method, with small options for the costly ones."""
    chosen = {}
    for name, cls in manager().items("methods").items():
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        chosen[name] = {key: value for key, value in SMALL.items() if key in fields}
    return chosen


def partition(model: Model, offloaded: set[int], where: int | str = "disk",
              rest: int | str = "cpu") -> dict[str, int | str]:
    """A device map covering every module: the modules in ``offloaded`` (ids) on ``where``,
    every other block on ``rest``, as coarse as the tree allows."""
    placed: dict[str, int | str] = {}

    def visit(name: str, module: torch.nn.Module) -> None:
        inside = {id(m) for m in module.modules()}
        if id(module) in offloaded or not inside & offloaded:
            placed[name] = where if id(module) in offloaded else rest
            return
        assert not list(module.parameters(recurse=False)), name
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model.hf)
    return placed


def forced_split(model: Model) -> dict[str, str]:
    """Disk for what our hooks and methods touch: the vision layer Grad-CAM reads, the first
    decoder layer (LRP's leaves), the final norm (the trace) and the unembedding."""
    vision = model.vision_layers()[model.default_vision_layer()]
    touched = [vision, model.decoder_layers()[0], model.final_norm(),
               model.hf.get_output_embeddings()]
    return partition(model, {id(m) for m in touched})


def explain_all(model: Model, image) -> dict:
    failures: dict[str, BaseException] = {}
    chosen = methods()
    out = explain_many(model, [image], PROMPT, list(chosen), method_options=chosen,
                       max_new_tokens=N_TOKENS, generate_kwargs={"min_new_tokens": N_TOKENS},
                       failures=failures)
    assert not failures, {name: str(exc) for name, exc in failures.items()}
    return out


@pytest.fixture(scope="module")
def unsplit(demo_image):
    built: dict[str, dict] = {}

    def get(family: str) -> dict:
        if family not in built:
            built[family] = explain_all(find_family(family).tiny(seed=0), demo_image)
        return built[family]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("family, split", [("qwen2-vl", "forced"), ("llava", "forced"),
                                           ("qwen2-vl", "max_memory")])
def test_split_model_gives_the_unsplit_maps(family, split, unsplit, demo_image):
    reference = unsplit(family)
    model = find_family(family).tiny(seed=0)
    if split == "forced":
        dm.dispatch(model, forced_split(model))
    else:  # accelerate's own split: what does not fit 40% of the weights goes to disk
        size = sum(p.numel() * p.element_size() for p in model.hf.parameters())
        dm.dispatch(model, "sequential", max_memory={"cpu": int(0.4 * size)})
    placed = set(model.hf.hf_device_map.values())
    assert placed == {"cpu", "disk"}, placed  # a real split: hooks on every block
    assert model.hf.get_output_embeddings().weight.device.type == "meta" or split != "forced"
    assert model.device == torch.device("cpu")
    got = explain_all(model, demo_image)
    assert set(got) == set(reference)
    for name, explanation in reference.items():
        assert torch.equal(got[name].trace.sequence, explanation.trace.sequence), name
        scale = max(float(np.abs(explanation.maps).max()), 1e-6)
        np.testing.assert_allclose(got[name].maps, explanation.maps, rtol=1e-5,
                                   atol=1e-5 * scale, err_msg=name)


def test_gradients_flow_through_offloaded_layers(tiny_model, demo_image):
    """Grad-CAM and LRP give non-zero maps through disk-offloaded decoder layers: the
    gradient of the logit reaches leaves below blocks whose weights were loaded for the
    forward only (the unsplit model's maps are not zero either)."""
    model = find_family("qwen2-vl").tiny(seed=0)
    dm.dispatch(model, forced_split(model))
    chosen = ["gradcam", "cp-lrp"]
    for source in (tiny_model("qwen2-vl"), model):
        out = explain_many(source, [demo_image], PROMPT, chosen, max_new_tokens=2,
                           generate_kwargs={"min_new_tokens": 2})
        for name in chosen:
            assert np.abs(out[name].maps).max() > 0, name


def test_offloaded_weight_is_read_back(tiny_model):
    model = find_family("llava").tiny(seed=0)
    expected = tiny_model("llava").unembedding().detach().clone()
    dm.dispatch(model, forced_split(model))
    assert model.hf.get_output_embeddings().weight.device.type == "meta"
    assert torch.equal(model.unembedding(), expected)


# -- the command line and the loader --------------------------------------------------------
@pytest.fixture
def offloaded_forwards(monkeypatch) -> list[str]:
    """The classes of the modules whose offloaded weights accelerate's hooks loaded for a
    forward: proof that a run split its model rather than ignore the map."""
    from accelerate.hooks import AlignDevicesHook

    seen: list[str] = []
    real = AlignDevicesHook.pre_forward

    def pre_forward(self, module, *args, **kwargs):
        if self.offload:
            seen.append(type(module).__name__)
        return real(self, module, *args, **kwargs)

    monkeypatch.setattr(AlignDevicesHook, "pre_forward", pre_forward)
    return seen


def test_explain_with_a_device_map_matches_without(tiny_dir, tmp_path, capsys,
                                                   offloaded_forwards):
    folder = tiny_dir("qwen2-vl")
    image = str(folder / "demo.png")
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    common = [image, "--method", "tam,gradcam", "--max-new-tokens", "2", "--device", "auto"]
    assert main(["explain", str(folder), *common, "--out", str(tmp_path / "a")]) == 0
    assert not offloaded_forwards
    assert main(["explain", str(folder), *common, "--out", str(tmp_path / "b"),
                 "--device-map", "auto", "--max-memory", f"cpu={size // 3}B"]) == 0
    assert offloaded_forwards  # the split ran: weights loaded from disk for forwards
    for method in ("tam", "gradcam"):
        a = np.load(tmp_path / "a" / method / "maps.npz")
        b = np.load(tmp_path / "b" / method / "maps.npz")
        np.testing.assert_array_equal(a["generated_ids"], b["generated_ids"])
        np.testing.assert_allclose(b["maps"], a["maps"], rtol=1e-5, atol=1e-6)
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["answer"] == json.loads((tmp_path / "a" / "run.json").read_text())["answer"]


def test_load_model_splits_with_offload(tiny_dir):
    folder = tiny_dir("llava")
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    model = load_model(str(folder), device_map="sequential", max_memory={"cpu": size // 3})
    assert "disk" in model.hf.hf_device_map.values()
    assert model.device == torch.device("cpu")
    assert model.unembedding().device.type == "cpu"


@pytest.mark.parametrize("text, cause", [
    ("cpu", "expected DEVICE=SIZE"),
    ("gpu=2GiB", "'gpu' is not a device"),
    ("cpu=lots", "'lots' is not a size"),
    ("cpu=0GiB", "more than 0 bytes"),
    ("cpu=1GiB,cpu=2GiB", "cpu is given twice"),
    ("7=20GiB", "no CUDA device 7 here"),
    ("", "expected DEVICE=SIZE entries"),
])
def test_bad_max_memory_is_one_line(text, cause):
    with pytest.raises(InputError, match=cause) as caught:
        dm.parse_max_memory(text)
    assert "\n" not in str(caught.value) and "--max-memory" in str(caught.value)


def test_max_memory_sizes():
    assert dm.parse_max_memory("cpu=1GiB, disk=2gb") == {"cpu": 2**30, "disk": 2 * 10**9}
    assert dm.parse_max_memory("cpu=512") == {"cpu": 512}
    assert dm.check_max_memory({"cpu": "1.5KiB"}) == {"cpu": 1536}


@pytest.mark.parametrize("argv, cause", [
    (["--max-memory", "cpu=1GiB"], "--device-map, which is not given"),
    (["--device-map", "auto", "--device", "cpu"], "--device cpu and --device-map exclude"),
    (["--device-map", "everywhere"], "--device-map 'everywhere': expected auto"),
    (["--device-map", "auto", "--max-memory", "cpu=many"], "'many' is not a size"),
])
def test_explain_refuses_in_one_line(argv, cause, tmp_path, capsys, demo_image):
    code = main(["explain", "tiny:qwen2-vl", str(demo_image), "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and cause in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_compare_refuses_workers_with_a_device_map(tmp_path, capsys):
    code = main(["compare", "--model", "tiny:qwen2-vl", "--dataset", "synthetic",
                 "--device-map", "auto", "--workers", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--workers 2 and --device-map exclude each other" in err


def test_without_accelerate_the_flag_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_accelerate(name, *args, **kwargs):
        if name == "accelerate" or name.startswith("accelerate."):
            raise ImportError("No module named 'accelerate'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_accelerate)
    with pytest.raises(InputError, match=r"pip install 'mmxai\[device-map\]'"):
        dm.placement("auto", None)


def test_compare_with_a_device_map_stores_the_same_results(tmp_path, offloaded_forwards):
    from mmxai.compare_api import compare

    common = dict(dataset="synthetic", methods="tam", metrics="deletion", limit=2,
                  bootstrap=10, progress=False, min_new_tokens=3,
                  deletion={"steps": 2, "max_tokens": 0})
    plain = compare("tiny:qwen2-vl", out=tmp_path / "a", **common).rows()
    assert not offloaded_forwards
    split = compare("tiny:qwen2-vl", out=tmp_path / "b", device_map="sequential",
                    max_memory={"cpu": "60KB"}, **common).rows()
    assert offloaded_forwards  # the split ran: weights loaded from disk for forwards
    column = next(k for k in plain[0] if k.startswith("deletion") and "." not in k)
    assert [(r["n"], r["failed"]) for r in plain] == [(2, 0)]
    assert np.isfinite(plain[0][column])
    assert split == plain


def test_randomisation_refuses_offloaded_layers(tiny_model):
    from mmxai.errors import MMXAIError
    from mmxai.plugins.metrics.sanity import randomised_copy

    model = find_family("qwen2-vl").tiny(seed=0)
    dm.dispatch(model, partition(model, {id(model.decoder_layers()[-1])}))
    with pytest.raises(MMXAIError, match="offloaded .* cannot be randomised"):
        randomised_copy(model, 0.5, seed=0)


def test_state_hash_of_a_split_model_is_the_unsplit_one(tiny_model):
    from mmxai.evaluation.provenance import hash_state

    model = find_family("llava").tiny(seed=0)
    dm.dispatch(model, forced_split(model))
    assert hash_state(model.hf) == hash_state(tiny_model("llava").hf)


def test_randomisation_below_offloaded_layers_matches_unsplit(tiny_model, demo_image):
    """The randomised copy of a model whose vision tower and first decoder layer are
    offloaded (the randomised top layer is not) gives the unsplit copy's maps, and copying
    it leaves the model's offload folder in place."""
    from mmxai.plugins.metrics.sanity import randomised_copy
    from mmxai.trace import forced_trace

    maps = []
    for model in (tiny_model("qwen2-vl"), find_family("qwen2-vl").tiny(seed=0)):
        if model is not tiny_model("qwen2-vl"):
            dm.dispatch(model, partition(model, {id(model.vision_layers()[0]),
                                                 id(model.decoder_layers()[0])}))
        tam = manager().get("methods", "tam")()
        trace = explain_many(model, [demo_image], PROMPT, [tam], max_new_tokens=3,
                             generate_kwargs={"min_new_tokens": 3})["tam"].trace
        again = forced_trace(randomised_copy(model, 0.5, seed=0), trace.inputs,
                             trace.generated_ids, tam.needs)
        maps.append(tam(again))
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-6)
    assert (Path(model.hf._mmxai_offload.name) / "index.json").is_file()


def test_randomised_copy_shares_the_offloaded_weights():
    """The CPU copies accelerate keeps of offloaded weights are shared with the randomised
    copy, as the parameters are, not copied (host memory would double)."""
    from accelerate import cpu_offload

    from mmxai.plugins.metrics.sanity import offloaded_tensors, randomised_copy

    model = find_family("qwen2-vl").tiny(seed=0)
    cpu_offload(model.decoder_layers()[0], execution_device="cpu")
    held = offloaded_tensors(model.hf)
    assert held and all(p.device.type == "meta" for p in model.decoder_layers()[0].parameters())
    copied = offloaded_tensors(randomised_copy(model, 0.5, seed=0).hf)
    assert [t.untyped_storage().data_ptr() for t in copied] == \
        [t.untyped_storage().data_ptr() for t in held]


def test_a_device_map_naming_a_missing_gpu_is_one_line():
    missing = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in (missing, f"cuda:{missing}"):
        with pytest.raises(InputError, match=f"no CUDA device {missing} here") as caught:
            dm.check_device_map({"model": device, "lm_head": "cpu"}, "device_map")
        assert "\n" not in str(caught.value) and "device_map['model']" in str(caught.value)
    for device in ("²", "cuda:²", "gpu", -1, True, "meta"):
        with pytest.raises(InputError, match="is not a device"):
            dm.check_device_map({"model": device}, "device_map")
        with pytest.raises(InputError, match="is not a device"):
            dm.check_max_memory({device: "1GiB"})
    with pytest.raises(InputError, match="'²' is not a device"):
        dm.parse_max_memory("²=1GiB")


# -- GPUs: mixed-device splits (the tests above split over cpu and disk only) ---------------
def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(cuda_count() < 1, reason="needs a CUDA device (tests/QUARANTINES.md)")
def test_dispatching_a_model_on_a_gpu_offloads_its_cpu_blocks_to_the_cpu():
    """A model built on a GPU, dispatched with cpu entries: the offloaded weights are kept in
    host memory, not left on the GPU (accelerate offloads what the state_dict holds)."""
    from mmxai.plugins.metrics.sanity import offloaded_tensors

    model = find_family("qwen2-vl").tiny(seed=0)
    model.hf.to("cuda:0")
    layer = model.decoder_layers()[0]
    dm.dispatch(model, partition(model, {id(layer)}, where="cpu", rest=0))
    assert all(p.device.type == "meta" for p in layer.parameters())
    held = offloaded_tensors(model.hf)
    assert held and {t.device.type for t in held} == {"cpu"}


@pytest.mark.gpu
@pytest.mark.skipif(cuda_count() < 2, reason="needs 2 CUDA devices (tests/QUARANTINES.md)")
def test_a_model_split_over_two_gpus_gives_the_one_gpu_maps(demo_image):
    """Embeddings, vision tower and the lower decoder layers on GPU 0; the upper layers, the
    final norm and the unembedding on GPU 1: every method's maps are the unsplit model's,
    and a teacher-forced trace's attentions and vocabulary statistics come back readable."""
    from mmxai.trace import forced_trace

    whole = find_family("qwen2-vl").tiny(seed=0)
    whole.hf.to("cuda:0")
    split = find_family("qwen2-vl").tiny(seed=0)
    layers = split.decoder_layers()
    upper = [*layers[len(layers) // 2:], split.final_norm(), split.hf.get_output_embeddings()]
    dm.dispatch(split, partition(split, {id(m) for m in upper}, where=1, rest=0))
    assert set(split.hf.hf_device_map.values()) == {0, 1}
    assert split.final_norm().weight.device == torch.device("cuda:1")
    reference, got = explain_all(whole, demo_image), explain_all(split, demo_image)
    for name, explanation in reference.items():
        assert torch.equal(got[name].trace.sequence, explanation.trace.sequence), name
        scale = max(float(np.abs(explanation.maps).max()), 1e-6)
        np.testing.assert_allclose(got[name].maps, explanation.maps, rtol=1e-4,
                                   atol=1e-4 * scale, err_msg=name)
    needs = manager().get("methods", "tam")().needs | Needs(attentions=True, topk=3)
    traces = [forced_trace(m, out.trace.inputs, out.trace.generated_ids, needs)
              for m, out in ((whole, reference["tam"]), (split, got["tam"]))]
    assert {a.device.type for a in traces[1].attentions} == {"cpu"}
    for a, b in zip(traces[0].attentions, traces[1].attentions, strict=True):
        torch.testing.assert_close(b, a.cpu(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(traces[1].logsumexp.cpu(), traces[0].logsumexp.cpu())


def test_a_map_that_leaves_modules_out_is_one_line():
    model = find_family("llava").tiny(seed=0)
    with pytest.raises(InputError, match="device_map: .*does not give any device") as caught:
        dm.dispatch(model, {"model.vision_tower": "disk"})
    assert "\n" not in str(caught.value)
