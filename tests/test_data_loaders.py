"""enwik8 and CIFAR-10 loaders on small files in the real formats, made by the tests."""

import pickle

import numpy as np
import pytest
import torch

from rezero_dynamics.data import load_cifar10, load_digits, load_enwik8


def test_enwik8_split_and_bytes(tmp_path):
    data = bytes(range(256)) * 40  # 10,240 bytes
    path = tmp_path / "enwik8"
    path.write_bytes(data[:10_000])
    corpus = load_enwik8(path, expected_bytes=10_000)
    assert (corpus.train.numel(), corpus.validation.numel(), corpus.test.numel()) == (9_000, 500, 500)
    assert corpus.train[:3].tolist() == [0, 1, 2]
    assert len(corpus.vocabulary) == 256
    assert load_enwik8(tmp_path, expected_bytes=10_000).train.numel() == 9_000  # a folder works too


def test_enwik8_truncated(tmp_path):
    path = tmp_path / "enwik8"
    path.write_bytes(b"x" * 999)
    with pytest.raises(ValueError, match="has 999 bytes, but enwik8 has exactly 1,000; the file is truncated"):
        load_enwik8(path, expected_bytes=1000)


def test_enwik8_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="enwik8 not found at .*100,000,000 bytes"):
        load_enwik8(tmp_path / "nothing")


def test_enwik8_zip(tmp_path):
    path = tmp_path / "enwik8"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 96)
    with pytest.raises(ValueError, match="zip archive; unzip it"):
        load_enwik8(path, expected_bytes=100)


def write_cifar_batch(path, images, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (images, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, images).tolist(),
        b"filenames": [b"f.png"] * images,
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)
    return batch


def make_cifar(folder, images=20):
    folder.mkdir()
    batches = [write_cifar_batch(folder / f"data_batch_{i}", images, i) for i in range(1, 6)]
    write_cifar_batch(folder / "test_batch", images, 9)
    return batches


def test_cifar10_format(tmp_path):
    batches = make_cifar(tmp_path / "cifar-10-batches-py")
    dataset = load_cifar10(tmp_path / "cifar-10-batches-py", validation_images=10)
    assert dataset.train[0].shape == (90, 3072)
    assert dataset.validation[0].shape == (10, 3072)
    assert dataset.test[0].shape == (20, 3072)
    torch.testing.assert_close(dataset.train[0][0], torch.from_numpy(batches[0][b"data"][0]).float() / 255)
    assert dataset.train[1][:3].tolist() == batches[0][b"labels"][:3]


def test_cifar10_missing_batch(tmp_path):
    make_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 not found"):
        load_cifar10(tmp_path / "c")


def test_cifar10_truncated(tmp_path):
    make_cifar(tmp_path / "c")
    path = tmp_path / "c" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="data_batch_2 is not a CIFAR-10 Python batch"):
        load_cifar10(tmp_path / "c")


class RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').close()",))


def test_cifar10_code_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_cifar(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": RunsCode()}, handle)
    with pytest.raises(ValueError, match="not a CIFAR-10 Python batch"):
        load_cifar10(tmp_path / "c")
    assert not (tmp_path / "PWNED").exists()


def test_digits_split():
    dataset = load_digits()
    sizes = [len(dataset.train[1]), len(dataset.validation[1]), len(dataset.test[1])]
    assert sum(sizes) == 1797
    assert dataset.num_features == 64
    assert dataset.num_classes == 10
    assert dataset.train[0].min().item() >= 0.0
    assert dataset.train[0].max().item() <= 1.0


def test_cifar10_random_bytes(tmp_path):
    make_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="data_batch_4 is not a CIFAR-10 Python batch"):
        load_cifar10(tmp_path / "c")


def test_cifar10_labels_out_of_range(tmp_path):
    make_cifar(tmp_path / "c")
    batch = write_cifar_batch(tmp_path / "c" / "data_batch_5", 20, 5)
    batch[b"labels"][3] = 11
    with open(tmp_path / "c" / "data_batch_5", "wb") as handle:
        pickle.dump(batch, handle)
    with pytest.raises(ValueError, match="labels outside 0..9"):
        load_cifar10(tmp_path / "c")


def test_cifar10_float_pixels_rejected(tmp_path):
    make_cifar(tmp_path / "c")
    batch = write_cifar_batch(tmp_path / "c" / "test_batch", 20, 9)
    batch[b"data"] = batch[b"data"].astype(np.float64)
    with open(tmp_path / "c" / "test_batch", "wb") as handle:
        pickle.dump(batch, handle)
    with pytest.raises(ValueError, match="uint8"):
        load_cifar10(tmp_path / "c")
