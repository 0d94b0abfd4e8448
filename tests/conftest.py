"""Shared fixtures: tiny random-weight models, built once per test session.

Fixtures (all offline, CPU):

- ``tiny_families`` (session): ``{adapter name: adapter class}`` for every registered model
  adapter with a ``tiny()`` builder, sorted by name (``mmxai.commands.tiny.families``).
- ``tiny_model`` (session): a factory, ``tiny_model(family) -> Model``; the in-memory tiny
  model of a family (adapter name or HF architecture), built on first use and then shared.
  Treat it as read-only: it is the same object in every test that asks for that family.
- ``tiny_dir`` (session): a factory, ``tiny_dir(family) -> Path``; a folder holding the
  family's tiny model exactly as ``mmxai tiny FAMILY DIR`` saves it (weights, config,
  processor, ``demo.png``, a generation config asking for at least 4 tokens), built once.
  Load it with ``mmxai.model.load_model(str(path))``; do not write into it.
- ``demo_image`` (session): path of a 256x256 PNG photo (scikit-image's astronaut).
- ``nltk_data`` (session): the NLTK data folder of the TAM reference protocol (tagger and
  WordNet, ``../shared/nltk_data`` beside the checkout unless ``NLTK_DATA`` names one);
  ``NLTK_DATA`` is set to it for the whole session, so tests of ``--protocol tam-reference``
  run offline. A missing folder fails those tests with where it was looked for: they must
  run in CI, never be skipped.

Parametrisation: a test that takes an argument named ``tiny_family`` runs once per family in
``tiny_families`` (ids are the adapter names), so a new adapter with a tiny builder is
covered by such tests without editing them. With no such adapter registered the test runs
once with ``"<none>"`` and fails when it asks for the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mmxai.commands.tiny import families as _families
from mmxai.commands.tiny import find_family, save_demo_image, save_tiny
from mmxai.model import Model

REPO = Path(__file__).resolve().parents[1]
NLTK_DATA = Path(os.environ.get("NLTK_DATA") or REPO.parent / "shared" / "nltk_data")
os.environ["NLTK_DATA"] = str(NLTK_DATA)  # before any test imports nltk, which reads it once

# Tiny models are all overhead: more threads only contend (20x slower on a loaded 2-core box).
torch.set_num_threads(1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tiny_family" in metafunc.fixturenames:
        names = list(_families()) or ["<none>"]
        metafunc.parametrize("tiny_family", names, ids=names)


@pytest.fixture(scope="session")
def tiny_families() -> dict[str, type[Model]]:
    return _families()


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[str], Model]:
    built: dict[type[Model], Model] = {}

    def get(family: str) -> Model:
        adapter = find_family(family)
        if adapter not in built:
            built[adapter] = adapter.tiny(seed=0)
        return built[adapter]

    return get


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    saved: dict[type[Model], Path] = {}

    def get(family: str) -> Path:
        adapter = find_family(family)
        if adapter not in saved:
            folder = tmp_path_factory.mktemp(f"tiny-{adapter.name or 'model'}")
            save_tiny(family, folder, seed=0)
            saved[adapter] = folder
        return saved[adapter]

    return get


@pytest.fixture(scope="session")
def demo_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_demo_image(tmp_path_factory.mktemp("images") / "demo.png")


@pytest.fixture
def unreachable_hub(monkeypatch) -> list[str]:
    """The Hugging Face hub cannot be reached (a machine without network), and nothing is
    cached: each probe is one failed request, recorded in the returned list."""
    from mmxai import hub

    calls: list[str] = []

    def probe(repo_id: str) -> None:
        calls.append(repo_id)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "probe", probe)
    monkeypatch.setattr(hub, "_offline", lambda: False)  # CI runs with HF_HUB_OFFLINE=1
    monkeypatch.setattr(hub, "_cached_config", lambda repo_id: None)
    return calls


@pytest.fixture(scope="session")
def nltk_data() -> Path:
    """The NLTK data folder (tagger + WordNet) of the TAM reference protocol."""
    tagger = NLTK_DATA / "taggers" / "averaged_perceptron_tagger_eng"
    wordnet = NLTK_DATA / "corpora" / "wordnet"
    if not (tagger.is_dir() and wordnet.is_dir()):
        pytest.fail(f"NLTK data for the tam-reference protocol not found in {NLTK_DATA} "
                    "(set NLTK_DATA, or keep ../shared/nltk_data beside the checkout)")
    return NLTK_DATA
