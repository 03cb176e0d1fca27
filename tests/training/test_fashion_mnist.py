"""Fashion-MNIST IDX parsing and ImageFolder export."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import DatasetError
from training.data.fashion_mnist import (
    DEFAULT_SOURCE,
    FOLDER_NAMES,
    export_fashion_mnist,
    load_split,
    read_idx,
)

needs_data = pytest.mark.skipif(
    not DEFAULT_SOURCE.is_dir(), reason="needs `apt-get install dataset-fashion-mnist`"
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DEFAULT_SOURCE.is_dir():
        pytest.skip("needs `apt-get install dataset-fashion-mnist`")
    out = tmp_path_factory.mktemp("fm") / "export"
    result = export_fashion_mnist(out, per_class=5, val_per_class=3, seed=0)
    assert result.counts == {"train": 50, "val": 30}
    assert result.classes == FOLDER_NAMES
    return out


@needs_data
def test_tree_counts_and_image_format(small_export: Path) -> None:
    for split, per_class in (("train", 5), ("val", 3)):
        class_dirs = sorted(p.name for p in (small_export / split).iterdir())
        assert class_dirs == sorted(FOLDER_NAMES)
        for name in FOLDER_NAMES:
            pngs = list((small_export / split / name).glob("*.png"))
            assert len(pngs) == per_class, (split, name)
            for png in pngs:
                with Image.open(png) as im:
                    assert (im.size, im.mode, im.format) == ((28, 28), "L", "PNG")
    assert not (small_export / "test").exists()


@needs_data
def test_pixels_and_folders_match_source_splits(small_export: Path) -> None:
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    train_arrays = set()
    for png in (small_export / "train").rglob("*.png"):
        prefix, idx = png.stem.split("-")
        assert prefix == "train"
        pixels = np.asarray(Image.open(png))
        np.testing.assert_array_equal(pixels, train_x[int(idx)])
        assert png.parent.name == FOLDER_NAMES[train_y[int(idx)]]
        train_arrays.add(pixels.tobytes())
    for png in (small_export / "val").rglob("*.png"):
        prefix, idx = png.stem.split("-")
        assert prefix == "test"  # val is drawn from the 10k test split
        pixels = np.asarray(Image.open(png))
        np.testing.assert_array_equal(pixels, test_x[int(idx)])
        assert png.parent.name == FOLDER_NAMES[test_y[int(idx)]]
        assert pixels.tobytes() not in train_arrays


@needs_data
def test_same_seed_same_files_other_seed_other_picks(small_export: Path, tmp_path: Path) -> None:
    export_fashion_mnist(tmp_path / "again", per_class=5, val_per_class=3, seed=0)
    assert _files(tmp_path / "again") == _files(small_export)
    export_fashion_mnist(tmp_path / "other", per_class=5, val_per_class=3, seed=1)
    assert set(_files(tmp_path / "other")) != set(_files(small_export))


@needs_data
def test_val_from_train_is_disjoint_and_test_split_is_complete(tmp_path: Path) -> None:
    result = export_fashion_mnist(
        tmp_path, per_class=4, val_per_class=2, val_from="train", include_test=True, seed=5
    )
    assert result.counts == {"train": 40, "val": 20, "test": 10_000}
    train = {p.stem for p in (tmp_path / "train").rglob("*.png")}
    val = {p.stem for p in (tmp_path / "val").rglob("*.png")}
    assert all(s.startswith("train-") for s in val)
    assert not train & val
    for name in FOLDER_NAMES:
        assert len(list((tmp_path / "test" / name).glob("*.png"))) == 1000


@needs_data
def test_refuses_to_mix_with_an_old_export_unless_overwrite(tmp_path: Path) -> None:
    export_fashion_mnist(tmp_path, per_class=3, val_per_class=1)
    with pytest.raises(DatasetError, match="overwrite"):
        export_fashion_mnist(tmp_path, per_class=2, val_per_class=1)
    export_fashion_mnist(tmp_path, per_class=2, val_per_class=1, overwrite=True)
    assert len(list((tmp_path / "train").rglob("*.png"))) == 20  # no stale files left


@needs_data
def test_asking_for_more_than_a_class_holds_fails(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="only 1000 available"):
        export_fashion_mnist(tmp_path, per_class=1, val_per_class=1001)


def test_missing_source_names_the_apt_package(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        export_fashion_mnist(tmp_path / "out", source=empty)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("gzipped", [True, False])
def test_read_idx_round_trips_plain_and_gzipped(tmp_path: Path, gzipped: bool) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    raw = _idx_bytes(images, 0x803)
    path = tmp_path / ("x.gz" if gzipped else "x")
    path.write_bytes(gzip.compress(raw) if gzipped else raw)
    np.testing.assert_array_equal(read_idx(path, expected_magic=0x803), images)


def test_read_idx_rejects_wrong_magic_and_truncation(tmp_path: Path) -> None:
    labels = np.array([1, 2, 3], dtype=np.uint8)
    path = tmp_path / "labels"
    path.write_bytes(_idx_bytes(labels, 0x801))
    with pytest.raises(DatasetError, match="magic number 0x00000801; expected 0x00000803"):
        read_idx(path, expected_magic=0x803)
    path.write_bytes(_idx_bytes(labels, 0x801)[:-1])
    with pytest.raises(DatasetError, match="implies 11"):
        read_idx(path, expected_magic=0x801)


def test_load_split_from_a_small_synthetic_source(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 10
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(images, 0x803))
    )
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels[:19], 0x801))
    with pytest.raises(DatasetError, match="20 images .* but 19 labels"):
        load_split("test", source=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels, 0x801))
    x, y = load_split("test", source=tmp_path)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
