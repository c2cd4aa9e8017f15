"""Fit, validation and test samples: disjoint, seeded, counted as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from deepcloak.data.sets import load_dataset
from deepcloak.data.splits import DataSplits, ValFrom, default_val_samples
from deepcloak.errors import DeepCloakError
from deepcloak.sources import DataSource


def _keys(data: object) -> set[bytes]:
    x, y = data.tensors()  # type: ignore[attr-defined]
    return {bytes(xi.numpy().tobytes()) + bytes([int(yi)]) for xi, yi in zip(x, y, strict=True)}


def test_default_size_is_5000_or_half_of_the_split() -> None:
    assert default_val_samples(10_000) == 5000
    assert default_val_samples(60_000) == 5000
    assert default_val_samples(360) == 180
    assert default_val_samples(9) == 4


def test_validation_from_test_is_a_seeded_part_and_the_rest_is_reported() -> None:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    splits = DataSplits.make(train, test, seed=3)
    assert splits.val is not None and splits.validation is not None
    assert (len(splits.val), len(splits.test)) == (180, 180)
    assert len(splits.fit) == len(train)  # the fit keeps every training sample
    val, rest = _keys(splits.val), _keys(splits.test)
    assert not val & rest and val | rest == _keys(test)
    assert splits.validation.source == "test" and not splits.validation.biased
    assert "180 of the 360 test samples (seed 3)" in splits.validation.description
    again = DataSplits.make(train, test, seed=3)
    assert torch.equal(again.val.tensors()[0], splits.val.tensors()[0])  # type: ignore[union-attr]
    other = DataSplits.make(train, test, seed=4)
    assert not torch.equal(other.val.tensors()[0], splits.val.tensors()[0])  # type: ignore[union-attr]


def test_validation_from_train_is_held_out_of_the_fit_and_flagged_biased() -> None:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    splits = DataSplits.make(train, test, val_from="train", val_samples=300, seed=0)
    assert splits.val is not None and splits.validation is not None
    assert len(splits.val) == 300 and len(splits.fit) == len(train) - 300
    assert len(splits.test) == len(test)  # every test sample is reported on
    assert not _keys(splits.val) & _keys(splits.fit)
    assert splits.validation.biased and "biased" in splits.validation.description


def test_fit_samples_count_only_the_samples_fit_on() -> None:
    source = DataSource(name="digits", val_from="train", val_samples=200, fit_samples=500)
    splits = source.splits()
    assert len(splits.fit) == 500 and splits.val is not None and len(splits.val) == 200
    assert not _keys(splits.val) & _keys(splits.fit)
    by_default = DataSource(name="digits", fit_samples=500, test_samples=50).splits()
    assert len(by_default.fit) == 500 and len(by_default.test) == 50
    assert by_default.validation is not None and by_default.validation.source == "test"
    assert not _keys(by_default.val) & _keys(by_default.test)


def test_bad_sources_and_counts_are_clear_errors() -> None:
    with pytest.raises(DeepCloakError, match=r"unknown validation source 'dev'.*test, train"):
        ValFrom.parse("dev")
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    with pytest.raises(DeepCloakError, match="cannot hold out 360 of 360"):
        DataSplits.make(train, test, val_samples=360)
    with pytest.raises(DeepCloakError, match="needs the folder"):
        DataSplits.make(train, test, val_from="folder")
    with pytest.raises(DeepCloakError, match="--val-root gives a validation folder"):
        DataSource(name="digits", val_from="test", val_root=Path("somewhere"))
    with pytest.raises(DeepCloakError, match="needs --val-root"):
        DataSource(name="digits", val_from="folder").splits()


def _write_folder(root: Path, classes: list[str], per_class: int, value: int) -> None:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), color=value + i).save(root / c / f"{i}.png")


def test_a_validation_folder_is_read_whole_in_the_datas_classes_and_shape(tmp_path: Path) -> None:
    _write_folder(tmp_path / "val", ["3", "7"], per_class=4, value=10)
    source = DataSource(name="digits", val_root=tmp_path / "val")
    assert source.source() is ValFrom.FOLDER
    splits = source.splits()
    assert splits.val is not None and splits.validation is not None
    x, y = splits.val.tensors()
    assert x.shape == (8, 1, 8, 8) and sorted(y.tolist()) == [3] * 4 + [7] * 4
    assert len(splits.test) == 360 and splits.validation.source == "folder"


def test_an_image_folders_own_val_split_is_the_default(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("test", 3), ("val", 2)):
        _write_folder(tmp_path / split, ["cat", "dog"], per_class=n, value=40)
    source = DataSource(name="imagefolder", root=tmp_path)
    assert source.source() is ValFrom.FOLDER
    splits = source.splits()
    assert splits.val is not None and len(splits.val) == 4 and len(splits.test) == 6
    (tmp_path / "val" / "bird").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(Exception, match="name no class of the data"):
        source.splits()
