"""The inference spec (vitkit.utils.spec): one versioned record, read back with errors naming the field. The
task-specific checks come from the registered tasks' declarations (``Task.spec``), which vitkit.io passes in; here
the specs are bound to them as vitkit.io binds them."""

from __future__ import annotations

import json

import pytest
import torch

import vitkit
from tests.support.tiny_checkpoints import CLASS_NAMES, detector_config, save_detector
from vitkit.tasks import tasks
from vitkit.utils.spec import (
    SPEC_KEY,
    SPEC_VERSION,
    InferenceSpec,
    SpecError,
    SpecFields,
    read_spec,
    spec_from_metadata,
    spec_metadata,
    write_spec,
)

DECLARATIONS = {task.name: task.spec for task in tasks()}  # what vitkit.io passes to the spec readers


def _bound(**fields) -> InferenceSpec:
    spec = InferenceSpec(**fields)
    return spec.bind(DECLARATIONS[spec.task], DECLARATIONS)


def _detection(**changes) -> InferenceSpec:
    fields = {"task": "detection", "model_config": detector_config(), "size": 32, "max_size": 64,
              "class_names": CLASS_NAMES, "label_to_cat_id": [1, 3, 7, 9], "num_select": 10, **changes}
    return _bound(**fields)


def _captioning(**changes) -> InferenceSpec:
    fields = {"task": "captioning", "model_config": {"class_path": "vitkit.captioning.Captioner", "init_args": {}},
              "size": 32, "max_size": None, "tokenizer": "{}", "generation": {"num_beams": 2}, **changes}
    return _bound(**fields)


def _describe(**changes) -> InferenceSpec:
    text = {"class_path": "vitkit.captioning.Captioner", "init_args": {"encoder": None, "vocab_size": 9}}
    fields = {"task": "describe", "model_config": {"detector": detector_config(), "text": text, "roi_size": 7},
              "size": 32, "max_size": 64, "class_names": CLASS_NAMES, "label_to_cat_id": [1, 3, 7, 9],
              "tokenizer": "{}", **changes}
    return _bound(**fields)


@pytest.mark.parametrize("make", [_detection, _captioning, _describe])
def test_round_trips_through_checkpoints_and_safetensors_metadata(make):
    spec = make()
    ckpt: dict = {}
    write_spec(ckpt, spec)
    assert set(ckpt) == {SPEC_KEY} and ckpt[SPEC_KEY]["version"] == SPEC_VERSION
    assert read_spec(ckpt) == spec
    metadata = spec_metadata(spec)
    assert all(isinstance(v, str) for v in metadata.values())
    assert spec_from_metadata(metadata) == spec
    assert read_spec({}) is None and spec_from_metadata({}) is None
    other = {"detection": ("tokenizer", "generation"), "captioning": ("class_names", "label_to_cat_id", "num_select"),
             "describe": ()}
    assert not set(other[spec.task]) & set(spec.to_dict())  # only the task's own fields are written


def test_version_unknown_missing_and_bad_fields_are_named():
    data = _detection().to_dict()
    with pytest.raises(SpecError, match=r"x\.ckpt: 'vitkit_spec': inference spec field 'version' is 2.*newer vitkit"):
        read_spec({SPEC_KEY: {**data, "version": 2}}, "x.ckpt")
    with pytest.raises(SpecError, match="field 'version' is None"):
        InferenceSpec.from_dict({k: v for k, v in data.items() if k != "version"})
    with pytest.raises(SpecError, match=r"unknown inference spec field\(s\) \['val_size'\]"):
        InferenceSpec.from_dict({**data, "val_size": 800})
    with pytest.raises(SpecError, match=r"field\(s\) \['size'\] missing"):
        InferenceSpec.from_dict({k: v for k, v in data.items() if k != "size"})
    with pytest.raises(SpecError, match="must be a dict"):
        InferenceSpec.from_dict([1, 2])
    cases = {"task": "segmentation", "size": 0, "max_size": 16, "class_names": [1, 2], "label_to_cat_id": [1],
             "num_select": True, "model_config": {"init_args": {}}}
    for name, value in cases.items():
        with pytest.raises(SpecError, match=f"source: inference spec field '{name}'"):
            InferenceSpec.from_dict({**data, name: value}, "source", DECLARATIONS)
    with pytest.raises(SpecError, match="field 'tokenizer' is required for captioning"):
        _captioning(tokenizer=None)
    with pytest.raises(SpecError, match="field 'tokenizer' applies to captioning and describe only"):
        _detection(tokenizer="{}")
    with pytest.raises(SpecError, match="field 'class_names' applies to detection and describe only"):
        _captioning(class_names=["a"])


def test_a_region_caption_spec_holds_both_networks_and_the_tokenizer():
    spec = _describe()
    assert set(spec.to_dict()) >= {"tokenizer", "generation", "class_names", "label_to_cat_id", "num_select"}
    with pytest.raises(SpecError, match="field 'tokenizer' is required for describe"):
        _describe(tokenizer=None)
    for config in ({"class_path": "vitkit.detection.DETR", "init_args": {}}, {"detector": detector_config()},
                   {"detector": detector_config(), "text": {"init_args": {}}}):
        with pytest.raises(SpecError, match=r"field 'model_config' must be a \{'detector': .*'text': .* for describe"):
            _describe(model_config=config)
    with pytest.raises(SpecError, match="metadata 'vitkit_spec': not JSON"):
        spec_from_metadata({SPEC_KEY: "{"})


def test_load_names_a_bad_spec_field(tmp_path):
    path = save_detector(tmp_path / "det.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt[SPEC_KEY]["max_size"] = 16  # below size
    torch.save(ckpt, path)
    with pytest.raises(SpecError, match=r"det\.ckpt: 'vitkit_spec': inference spec field 'max_size'"):
        vitkit.load(path)
    assert json.dumps(_detection().to_dict())  # plain JSON types


def test_the_record_names_no_task_its_declaration_comes_from_the_caller():
    """Unbound, a spec checks its fields' types and values and writes the task-specific fields it holds; bound to a
    declaration, it checks the task's rules and writes exactly the task's fields."""
    spec = InferenceSpec(task="anything", model_config={"class_path": "torch.nn.Linear"}, size=32, max_size=None,
                         num_select=5)
    assert set(spec.to_dict()) == {"task", "model_config", "size", "max_size", "num_select", "version"}
    with pytest.raises(SpecError, match="field 'size'"):
        InferenceSpec(task="anything", model_config={}, size=0, max_size=None)
    with pytest.raises(SpecError, match="field 'num_select' is not recorded by anything specs"):
        spec.bind(SpecFields())
    assert set(spec.bind(SpecFields(used=("num_select", "generation"))).to_dict()) >= {"num_select", "generation"}
    assert InferenceSpec.from_dict(spec.to_dict()) == spec  # read without declarations: no task check
    with pytest.raises(ValueError, match="task-specific fields"):
        SpecFields(used=("size",))
