"""Which methods a run uses: costly methods (``default_run = False``) run when named or with
``all``, never by default; a plugin's method without the attribute runs by default."""

from mmxai.method import Method, default_methods
from mmxai.registry import manager


def test_default_leaves_out_only_the_costly_methods():
    registered = manager().items("methods")
    chosen = default_methods()
    assert chosen == [n for n, cls in registered.items() if cls.default_run]
    assert "tam" in chosen and "logit-lens" in chosen


def test_all_names_every_registered_method_once_in_order():
    registered = list(manager().items("methods"))
    assert default_methods(["all"]) == registered
    assert default_methods(["tam", "all"]) == ["tam", *[n for n in registered if n != "tam"]]
    assert default_methods(["tam"]) == ["tam"]


def test_a_costly_method_is_left_out_until_named(monkeypatch):
    class Costly(Method):
        name = "costly-test"
        default_run = False

    class Legacy:  # a plugin class from before the attribute: runs by default
        name = "legacy-test"

    items = {**manager().items("methods"), "costly-test": Costly, "legacy-test": Legacy}
    monkeypatch.setattr(type(manager()), "items", lambda self, kind: items)
    assert "costly-test" not in default_methods() and "legacy-test" in default_methods()
    assert default_methods(["costly-test"]) == ["costly-test"]
    assert "costly-test" in default_methods(["all"])


def test_the_api_reads_all_as_every_registered_method():
    from mmxai import api

    instances = api._methods("all", {"integrated-gradients": {"steps": 2}})
    assert [m.name for m in instances] == list(manager().items("methods"))
    by_name = {m.name: m for m in instances}
    assert by_name["integrated-gradients"].options.steps == 2
