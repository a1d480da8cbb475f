"""What a start costs: work a start repeats is skipped only where skipping cannot hide a change."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

from ketta.core import patching
from ketta.core.patching import Patch

UPSTREAM = "class Greeter:\n    def greet(self):\n        return 'stock'\n"


@pytest.fixture
def upstream_file(tmp_path, monkeypatch):
    """A throwaway 'upstream' module read from a file, as an installed Letta module is."""
    package = tmp_path / "ketta_fp_cache_upstream"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "greeter.py").write_text(UPSTREAM)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package / "greeter.py"
    for name in [n for n in sys.modules if n.startswith("ketta_fp_cache_upstream")]:
        del sys.modules[name]
    patching.stop_fingerprint_cache()


def greeter_patch(fingerprint: str, target: str = "ketta_fp_cache_upstream.greeter:Greeter.greet") -> Patch:
    return Patch(target=target, replacement=lambda self: "ketta", fingerprint=fingerprint, setting="hard_delete", why="test")


def start_check(cache_file, patch: Patch) -> str | None:
    """The drift check of one start (as letta_modifications.apply_all runs it), with the cache."""
    patching.use_fingerprint_cache(cache_file)
    try:
        return patching.drift(patch)
    finally:
        patching.save_fingerprint_cache()
        patching.stop_fingerprint_cache()


def test_a_warm_fingerprint_cache_still_sees_an_edited_upstream_file(upstream_file, tmp_path, monkeypatch):
    """The start reuses the fingerprint of an unchanged upstream file (no source read), but an
    edited file is read again: a patched target that changed still refuses the start."""
    importlib.import_module("ketta_fp_cache_upstream.greeter")
    written_against = patching.current_fingerprint(greeter_patch(""))
    class_patch = greeter_patch(patching.source_fingerprint(sys.modules["ketta_fp_cache_upstream.greeter"].Greeter),
                                target="ketta_fp_cache_upstream.greeter:Greeter.added")
    class_patch = Patch(target=class_patch.target, replacement=1, fingerprint=class_patch.fingerprint,
                        setting="hard_delete", why="test", mode="add")
    cache_file = tmp_path / "patch_fingerprints.json"
    assert start_check(cache_file, greeter_patch(written_against)) is None
    assert start_check(cache_file, class_patch) is None
    assert cache_file.exists()

    def no_source_read(obj):
        raise AssertionError(f"source of {obj!r} read although its file is unchanged")

    with monkeypatch.context() as patched:
        patched.setattr(inspect, "getsource", no_source_read)
        assert start_check(cache_file, greeter_patch(written_against)) is None
        assert start_check(cache_file, class_patch) is None
        assert "upstream source changed" in start_check(cache_file, greeter_patch("0" * 16))

    upstream_file.write_text(UPSTREAM.replace("'stock'", "'changed upstream'"))
    importlib.reload(sys.modules["ketta_fp_cache_upstream.greeter"])
    assert "upstream source changed" in start_check(cache_file, greeter_patch(written_against))
    assert "upstream source changed" in start_check(cache_file, class_patch)
    # and without a cache (`ketta patches verify`) the same answer
    assert "upstream source changed" in patching.drift(greeter_patch(written_against))


def test_an_unreadable_cache_is_an_empty_one(upstream_file, tmp_path):
    importlib.import_module("ketta_fp_cache_upstream.greeter")
    written_against = patching.current_fingerprint(greeter_patch(""))
    cache_file = tmp_path / "patch_fingerprints.json"
    cache_file.write_text("{not json")
    assert start_check(cache_file, greeter_patch(written_against)) is None
    assert "upstream source changed" in start_check(cache_file, greeter_patch("1" * 16))


@pytest.fixture
def unimported_package(tmp_path, monkeypatch):
    """An 'upstream' package on disk that nothing has imported yet, with a module importing from it."""
    package = tmp_path / "ketta_on_import_upstream"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "greeting.py").write_text("def greet():\n    return 'stock'\n")
    (package / "user.py").write_text("from ketta_on_import_upstream.greeting import greet\n\ndef hello():\n    return greet()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [n for n in sys.modules if n.startswith("ketta_on_import_upstream")]:
        del sys.modules[name]


def on_import_patch() -> Patch:
    return Patch(target="ketta_on_import_upstream.greeting:greet", replacement=lambda: "ketta", fingerprint="x",
                 setting="hard_delete", why="test")


def test_a_patch_applied_on_import_is_in_place_before_anyone_uses_the_module(unimported_package):
    """The start does not import a module stock Letta imports only for some requests just to patch
    it: the patch waits, and is applied as the module is first imported, before any importer (even
    one binding the name with ``from ... import``) sees it."""
    patch = on_import_patch()
    assert patching.apply_on_import(patch) is False
    assert "ketta_on_import_upstream.greeting" not in sys.modules
    assert patching.pending_on_import(patch) and not patching.is_applied(patch)
    user = importlib.import_module("ketta_on_import_upstream.user")
    assert user.hello() == "ketta"
    assert patching.is_applied(patch) and not patching.pending_on_import(patch)
    module = sys.modules["ketta_on_import_upstream.greeting"]
    assert inspect.getsource(module).startswith("def greet")  # the module's own loader, as a plain import
    assert patching.revert(patch) is True
    assert module.greet() == "stock"
    assert patching.apply_on_import(patch) is True  # imported by now: applied at once
    assert module.greet() == "ketta"
    patching.revert(patch)


def test_a_patch_reverted_before_the_import_is_never_applied(unimported_package):
    patch = on_import_patch()
    patching.apply_on_import(patch)
    assert patching.revert(patch) is False  # was waiting, not applied
    assert importlib.import_module("ketta_on_import_upstream.user").hello() == "stock"
    assert not patching.is_applied(patch)


def test_the_start_does_not_import_the_openai_resources_nor_nltk_to_patch_them():
    """Stock Letta imports neither before serving; Ketta's patches of both wait for the import (the
    servers of tests/test_usage.py record embedding calls through the OpenAI SDK patch this way)."""
    from ketta import letta_modifications

    waiting = [p for _, p in letta_modifications.iter_patches() if letta_modifications._applied_on_import(p)]
    assert {p.module_name.split(".")[0] for p in waiting} == {"openai", "nltk"}
    assert all(letta_modifications._drift_from_source(p) is None for p in waiting)


ROUTE_FIELDS_SCRIPT = r'''
import json
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from ketta.core import patching
from ketta.letta_modifications.server.rest_api import route_fields

class Item(BaseModel):
    name: str
    size: int = 1

class Shown(BaseModel):
    name: str

def build():
    app = FastAPI()
    @app.post("/items/{item_id}", response_model=Shown)
    def make(item_id: int, item: Item, q: str | None = None):
        return {"name": f"{item.name}-{item_id}-{q}", "secret": "never shown"}
    route = next(r for r in app.routes if getattr(r, "path", "") == "/items/{item_id}")
    fields = [route.response_field, route.body_field, *route.dependant.path_params, *route.dependant.query_params]
    return app, fields

def answers(app):
    client = TestClient(app)
    sent = [("/items/7?q=x", {"name": "a"}), ("/items/seven", {"name": "a"}), ("/items/7", {"size": "big"})]
    return [[r.status_code, r.json()] for r in (client.post(url, json=body) for url, body in sent)]

def built(fields):
    return sum("_type_adapter" in f.__dict__ for f in fields)

stock, stock_fields = build()
result = {"stock_built_at_construction": built(stock_fields), "stock": answers(stock), "stock_doc": stock.openapi()}
for patch in route_fields.PATCHES:
    patching.apply(patch)
app, fields = build()
result["built_at_construction"] = built(fields)
result["answers"] = answers(app)
result["built_after_use"] = built(fields)
result["doc"] = app.openapi()
print(json.dumps(result))
'''


def test_route_fields_build_their_adapters_at_first_use_and_behave_as_stock():
    """FastAPI's per-field TypeAdapters (~1.7 s of CPU of Letta's routes per start) wait for the
    field's first use; validation, the response model's filtering and the OpenAPI document are
    as stock. The patches come second (after the enums, whose import makes no route), before any
    patch module's target imports Letta's routers."""
    import json
    import subprocess

    from ketta import letta_modifications

    # Right after the enum patch (whose import of Letta makes no route), before anything that does.
    assert letta_modifications.PATCH_MODULES[1] == "ketta.letta_modifications.server.rest_api.route_fields"
    ran = subprocess.run([sys.executable, "-c", ROUTE_FIELDS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["stock_built_at_construction"] == 4  # response, body, path and query fields
    assert result["built_at_construction"] == 0
    assert result["built_after_use"] == 4
    assert result["answers"] == result["stock"]
    assert [status for status, _ in result["answers"]] == [200, 422, 422]
    assert result["answers"][0][1] == {"name": "a-7-x"}  # the response model dropped "secret"
    assert result["doc"] == result["stock_doc"]
