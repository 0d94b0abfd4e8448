"""The run specification: read once from ``mmxai compare``'s arguments, frozen, picklable,
hashed into the run keys as before it existed, stored whole in provenance, and what the
worker processes are handed instead of the arguments."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import queue
from pathlib import Path

import pytest
import torch
from fixtures.tam_fixture import write_coco_fixture
from helpers_evaluator import FAMILY, one_torch_thread  # noqa: F401

from mmxai import cli
from mmxai.api import make_method
from mmxai.commands import compare, workers
from mmxai.errors import InputError
from mmxai.evaluation import (
    Evaluator,
    Generation,
    NamedMetric,
    Reporter,
    ResultStore,
    RunSpec,
    Selection,
    provenance,
)
from mmxai.evaluation.spec import default_batch
from mmxai.registry import manager
from mmxai.words import WordOptions

TINY = f"tiny:{FAMILY}"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return parser.parse_args(list(argv))


def coco() -> object:
    return manager().get("datasets", "coco-caption")(Path("."))


def test_the_spec_is_read_from_compare_arguments():
    args = parse("--model", TINY, "--model", "other", "--dataset", "coco-caption",
                 "--data-root", "data/coco", "--method", "tam,random", "--method", "tam",
                 "--metric", "obj-iou", "--option", "tam.eci=false", "--max-new-tokens", "5",
                 "--min-new-tokens", "2", "--dtype", "bfloat16", "--batch", "4", "--seed", "7",
                 "--bootstrap", "200", "--limit", "9", "--no-retry", "--keep-going",
                 "--device", "cpu", "--trust-remote-code", "--out", "runs/x")
    assert compare.run_spec(args) == RunSpec(
        selection=Selection(models=(TINY, "other"), dataset="coco-caption",
                            data_root=Path("data/coco"), methods=("tam", "random"),
                            metrics=("obj-iou",), options=("tam.eci=false",)),
        generation=Generation(max_new_tokens=5, min_new_tokens=2, dtype="bfloat16"),
        words=None, batch_size=4, seed=7, bootstrap=200, limit=9, retry=False,
        keep_going=True, device="cpu", trust_remote_code=True, out=Path("runs/x"))
    defaults = compare.run_spec(parse())
    assert defaults.selection == Selection()  # the plan fills in the bundled benchmark
    assert defaults.generation == Generation(32, 0, "auto")
    assert defaults.batch_size is None  # the device's: 8 on CUDA, 1 on CPU
    assert defaults.batch_for(torch.device("cpu")) == default_batch(torch.device("cpu")) == 1
    assert defaults.batch_for(torch.device("cuda", 0)) == 8
    assert (defaults.retry, defaults.keep_going, defaults.bootstrap) == (True, False, 1000)
    chosen = ["--model", TINY, "--dataset", "coco-caption", "--data-root", ".", "--method",
              "random", "--metric", "seconds-per-token"]
    assert compare.make_plan(parse(*chosen)).spec == compare.run_spec(parse(*chosen))


@pytest.mark.parametrize(("spec", "message"), [
    (lambda: RunSpec(limit=0), "--limit must be at least 1"),
    (lambda: RunSpec(batch_size=0), "--batch must be at least 1"),
    (lambda: Generation(max_new_tokens=0), "--max-new-tokens must be at least 1"),
])
def test_the_spec_is_checked_when_it_is_made(spec, message):
    with pytest.raises(InputError, match=message):
        spec()


def test_the_spec_is_frozen_and_pickles():
    spec = RunSpec(selection=Selection(models=(TINY,), data_root=Path("d")),
                   generation=Generation(3, 3), words=WordOptions(prepositions=True),
                   batch_size=None, limit=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.generation.max_new_tokens = 4
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert Generation(3, 3).kwargs() == {"max_new_tokens": 3, "min_new_tokens": 3}


def key(spec: RunSpec, method: str = "random", dtype: str = "float32") -> str:
    return provenance.options_hash(
        provenance.run_settings(make_method(method), coco(), spec, dtype))


def test_the_key_hash_is_the_one_stores_already_hold():
    # computed by mmxai before the spec existed, from the same settings passed one by one
    assert key(RunSpec()) == "365375573c0d"
    assert key(RunSpec(generation=Generation(3, 3))) == "6f34763091b0"
    assert key(RunSpec(words=WordOptions(prepositions=True), seed=7),
               dtype="bfloat16") == "28f024f2555d"


def test_what_changes_results_changes_the_hash_and_nothing_else_does():
    base = RunSpec(generation=Generation(3, 3))
    others = [RunSpec(generation=Generation(4, 3)), RunSpec(generation=Generation(3, 2)),
              dataclasses.replace(base, seed=1),
              dataclasses.replace(base, words=WordOptions(numbers=True))]
    hashes = {key(base), key(base, dtype="bfloat16"), *(key(spec) for spec in others)}
    assert len(hashes) == 2 + len(others)
    same = [dataclasses.replace(base, batch_size=8), dataclasses.replace(base, bootstrap=10),
            dataclasses.replace(base, limit=5), dataclasses.replace(base, retry=False),
            dataclasses.replace(base, keep_going=True), dataclasses.replace(base, device="cpu"),
            dataclasses.replace(base, out=Path("elsewhere")),
            dataclasses.replace(base, selection=Selection(models=("m",)))]
    assert {key(spec) for spec in same} == {key(base)}


def test_provenance_stores_the_spec_whole(tmp_path, tiny_model):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    dataset = manager().get("datasets", "coco-caption")(root)
    spec = RunSpec(generation=Generation(2, 2), words=WordOptions(common_nouns=("dog",)),
                   seed=3, limit=1, bootstrap=50)
    metrics = [NamedMetric.make(manager().get("metrics", "seconds-per-token"))]
    with ResultStore(tmp_path / "r.sqlite") as store:
        Evaluator(dataset, [make_method("random")], metrics, store, spec,
                  reporter=Reporter()).run(tiny_model(FAMILY), TINY)
        ((stored_key, record),) = store.provenance().items()
    assert RunSpec.from_dict(record["run"]) == spec
    assert stored_key.options_hash == key(spec)
    assert (record["max_new_tokens"], record["min_new_tokens"], record["seed"]) == (2, 2, 3)
    # the word options as hashed: the tagger at its default ("lists") is left out, so keys
    # stored before the tam-reference protocol added it still match
    words = dataclasses.asdict(spec.words) | {"common_nouns": ["dog"]}
    del words["tagger"]
    assert record["words"] == words


class _Process:
    """A worker process that is recorded, not started."""

    def __init__(self, target, name, daemon, args) -> None:
        self.target, self.args, self.exitcode = target, args, 0
        started.append(self)

    def start(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        pass


class _Context:
    def Queue(self):  # noqa: N802 (multiprocessing's name)
        return queue.Queue()

    def Process(self, **kwargs):  # noqa: N802
        return _Process(**kwargs)


started: list[_Process] = []


def test_workers_are_handed_the_spec_built_once(tmp_path, capsys, monkeypatch):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    reads = []
    real = compare.run_spec
    monkeypatch.setattr(compare, "run_spec", lambda args: reads.append(args) or real(args))
    monkeypatch.setattr(workers.multiprocessing, "get_context", lambda _: _Context())
    started.clear()
    cli.main(["compare", "--model", TINY, "--dataset", "coco-caption", "--data-root", str(root),
              "--method", "random", "--metric", "seconds-per-token", "--workers", "2",
              "--no-progress", "--device", "cpu", "--out", str(tmp_path / "out")])
    capsys.readouterr()  # the fake workers stored nothing: the run ends in an error
    assert len(reads) == 1 and len(started) == 2
    spec = real(reads[0])
    for index, process in enumerate(started):
        build, handed, number, count = process.args[:4]
        assert build is compare.build_plan and handed == spec and (number, count) == (index, 2)
        assert not any(isinstance(arg, argparse.Namespace) for arg in process.args)
        assert pickle.loads(pickle.dumps((build, handed))) == (build, handed)
