import io
import json
import logging
import random
import tarfile
from functools import partial

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from tokenformer_mm.data import expand_shards
from tokenformer_mm.shard_split import samples_in
from tokenformer_mm.shards import write_shards
from tokenformer_mm.train.batches import to_device
from tokenformer_mm.vision.data import (
    DeviceImageTransform,
    EvalDecode,
    TrainDecode,
    image_eval_loader,
    image_train_loader,
    random_resized_crop_box,
)
from tokenformer_mm.vision.sources import digits_samples, ensure_digits_shards, imagefolder_classes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = pytest.mark.webdataset  # every test here reads or writes shards


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    return ensure_digits_shards(tmp_path_factory.mktemp("cache"))


def all_keys(loader):
    return [key for batch in loader for key in batch["key"]]


def test_train_loader_reads_every_sample_once_per_epoch_over_two_workers(digits_dir):
    loader = image_train_loader(
        str(digits_dir / "train-*.tar"), 50, 32, num_workers=2, drop_last=False
    )
    assert loader.dataset.num_samples == 1437
    first = all_keys(loader)
    assert len(first) == len(set(first)) == 1437
    loader.dataset.set_epoch(1)
    second = all_keys(loader)
    assert sorted(second) == sorted(first) and second != first  # same samples, new order


def test_train_batches_are_uint8_crops_with_labels(digits_dir):
    loader = image_train_loader(str(digits_dir / "train-*.tar"), 16, 40, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (16, 3, 40, 40) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64 and set(batch["label"].tolist()) <= set(range(10))


def test_ranks_split_evaluation_so_every_sample_is_read_exactly_once(digits_dir):
    pattern = str(digits_dir / "train-*.tar")  # 8 shards: enough to split over 2 ranks x 2 workers
    per_rank = [
        all_keys(image_eval_loader(pattern, 64, 32, num_workers=2, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert per_rank[0] and per_rank[1] and not set(per_rank[0]) & set(per_rank[1])
    assert len(per_rank[0]) + len(per_rank[1]) == 1437


def test_training_shard_order_is_shared_by_ranks_and_changes_by_epoch(digits_dir):
    loaders = [
        image_train_loader(
            str(digits_dir / "train-*.tar"), 8, 32, num_workers=0, rank=r, world_size=2
        )
        for r in (0, 1)
    ]
    streams = [loader.dataset for loader in loaders]
    reads = [s.shards_for_worker(0, 1) for s in streams]
    whole = [{read.url for read in rank if read.stop is None} for rank in reads]
    cut = [{read.url for read in rank if read.stop is not None} for rank in reads]
    # 7 shards of 200 and one of 37, shares of 719 and 718: three 200s each, the 37 to rank 0,
    # and the last 200 cut between them (82 + 118)
    assert not whole[0] & whole[1] and (len(whole[0]), len(whole[1])) == (4, 3)
    assert cut[0] == cut[1] and len(cut[0]) == 1 and not cut[0] & (whole[0] | whole[1])
    declared = streams[0].declared
    taken = [sum(samples_in(read, declared[read.url]) for read in rank) for rank in reads]
    assert taken == [719, 718]
    before = streams[0].shards_for_worker(0, 1)
    streams[0].set_epoch(3)
    assert streams[0].shards_for_worker(0, 1) != before


def test_corrupt_jpeg_and_truncated_tar_are_skipped_and_counted(tmp_path, caplog):
    samples = list(digits_samples("val"))[:20]
    samples[3]["jpg"] = b"\xff\xd8 this is not a jpeg"
    write_shards(iter(samples[:10]), tmp_path, "a", 10)
    write_shards(iter(samples[10:]), tmp_path, "b", 10)
    # Truncate shard b inside the image of its 7th sample: 6 samples remain readable.
    shard_b = tmp_path / "b-000000.tar"
    with tarfile.open(shard_b) as tar:
        member = next(m for m in tar if m.name == f"{samples[16]['__key__']}.jpg")
    shard_b.write_bytes(shard_b.read_bytes()[: member.offset_data + 100])

    loader = image_train_loader(str(tmp_path / "*.tar"), 4, 32, num_workers=2, drop_last=False)
    with caplog.at_level(logging.WARNING):
        keys = all_keys(loader)
        report = loader.dataset.report()
    expected = {s["__key__"] for s in samples[:16]} - {samples[3]["__key__"]}
    assert set(keys) == expected and len(keys) == 15
    # the corrupt JPEG and the half-read sample at the damage; one damaged shard
    assert loader.dataset.skipped_samples.value == 2
    assert loader.dataset.damaged_shards.value == 1
    assert "skipped 2 corrupt samples; 1 of 2 shards damaged" in report
    assert "skipped 2 corrupt samples" in caplog.text  # logged in the main process


def test_missing_shard_pattern_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"nothing-\{00..09\}.tar' matches no files"):
        image_train_loader(str(tmp_path / "nothing-{00..09}.tar"), 8, 32)
    with pytest.raises(ValueError, match="matches no files"):
        expand_shards(str(tmp_path))  # a folder is not a shard


def test_a_brace_range_with_a_missing_shard_is_an_error(digits_dir):
    with pytest.raises(ValueError, match=r"names 1 missing files \(e.g. .*val-000002.tar\)"):
        expand_shards(str(digits_dir / "val-{000000..000002}.tar"))


def test_imagenet_wds_info_json_is_read(tmp_path):
    """The public imagenet-1k-wds layout: split 'validation', shard names with the split in them."""
    for i in range(2):
        write_shards(digits_samples("val"), tmp_path / "tmp", f"part{i}", 1000)
        (tmp_path / "tmp" / f"part{i}-000000.tar").rename(
            tmp_path / f"imagenet1k-validation-{i:02d}.tar"
        )
    info = {
        "name": "imagenet-1k",
        "splits": {
            "validation": {
                "name": "validation",
                "num_samples": 720,
                "filenames": ["imagenet1k-validation-00.tar", "imagenet1k-validation-01.tar"],
                "shard_lengths": [360, 360],
            }
        },
    }
    (tmp_path / "_info.json").write_text(json.dumps(info))
    loader = image_eval_loader(
        str(tmp_path / "imagenet1k-validation-{00..01}.tar"), 100, 32, num_workers=2
    )
    assert loader.dataset.num_samples == 720
    assert len(all_keys(loader)) == 720


def photo(width=480, height=360, fmt="JPEG"):
    """A smooth, photo-like test image (gradients and a disc), encoded as a file would be."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 23.0)], -1)
    rgb[(x - width / 2) ** 2 + (y - height / 3) ** 2 < (height / 5) ** 2] = (250, 30, 60)
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def test_eval_decode_matches_torchvision_resize_and_centre_crop():
    data = photo(fmt="PNG")
    ours = EvalDecode(64, crop_pct=0.875)({"__key__": "k", "png": data, "cls": b"3"}, None)
    reference = T.Compose(
        [T.Resize(73, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64)]
    )
    expected = TF.pil_to_tensor(reference(Image.open(io.BytesIO(data)).convert("RGB")))
    assert ours["label"] == 3 and ours["image"].shape == expected.shape == (3, 64, 64)
    # torchvision crops at whole pixels of the resized image, we at exact ones: ~half a pixel apart
    assert (ours["image"].float() - expected.float()).abs().mean() < 5  # of 255 levels


def test_train_decode_with_jpeg_draft_matches_full_decode_crop():
    data = photo(width=1024, height=768)
    decode = TrainDecode(64, scale=(0.3, 0.3), ratio=(1.0, 1.0))
    ours = decode({"__key__": "k", "jpg": data, "cls": b"1"}, random.Random(7))
    left, top, right, bottom = random_resized_crop_box(
        1024, 768, (0.3, 0.3), (1.0, 1.0), random.Random(7)
    )
    image = Image.open(io.BytesIO(data)).convert("RGB")
    expected = TF.pil_to_tensor(
        TF.resized_crop(
            image, top, left, bottom - top, right - left, [64, 64], T.InterpolationMode.BICUBIC
        )
    )
    assert (ours["image"].float() - expected.float()).abs().mean() < 3


def test_crop_box_follows_torchvision_random_resized_crop():
    """Same distribution as torchvision's: area fraction within scale, aspect within ratio."""
    rng = random.Random(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(400, 300, (0.2, 0.9), (0.75, 1.333), rng)
        w, h = right - left, bottom - top
        assert left >= 0 and right <= 400 and top >= 0 and bottom <= 300
        assert 0.2 - 0.01 <= w * h / 120000 <= 0.9 + 0.01 and 0.74 <= w / h <= 1.35
    # impossible ranges fall back to the largest central crop with a clamped aspect ratio
    assert random_resized_crop_box(400, 100, (1.0, 1.0), (1.0, 1.0), rng) == (150, 0, 250, 100)


def test_augmentation_depends_on_sample_and_epoch_not_on_workers(digits_dir):
    def crops(num_workers, epoch):
        loader = image_train_loader(str(digits_dir / "val-*.tar"), 40, 24, num_workers=num_workers)
        loader.dataset.set_epoch(epoch)
        return {k: img for b in loader for k, img in zip(b["key"], b["image"], strict=True)}

    one, two, next_epoch = crops(0, 0), crops(2, 0), crops(0, 1)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], next_epoch[k]) for k in one)


def test_device_transform_equals_torchvision_reference():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(6)
    reference = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    x, y = DeviceImageTransform(MEAN, STD)(images, labels)
    torch.testing.assert_close(x, reference(images))
    assert torch.equal(y, labels)
    flipped, _ = DeviceImageTransform(MEAN, STD, hflip=1.0)(images, labels, train=True)
    torch.testing.assert_close(flipped, reference(TF.horizontal_flip(images)))
    unflipped, _ = DeviceImageTransform(MEAN, STD, hflip=1.0)(images, labels, train=False)
    torch.testing.assert_close(unflipped, reference(images))


def test_device_mixup_gives_soft_targets():
    transform = DeviceImageTransform(MEAN, STD, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    x, targets = transform(images, torch.arange(8), train=True)
    assert x.shape == (8, 3, 16, 16) and targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets > 0).sum(1).max() == 2  # each image mixes two classes


def test_to_device_moves_tensors_and_keeps_the_rest():
    batch = to_device({"image": torch.zeros(2, 3), "key": ["a", "b"]}, "cpu")
    assert batch["key"] == ["a", "b"] and batch["image"].device.type == "cpu"


def test_make_shards_imagefolder_round_trip(tmp_path):
    from scripts.make_shards import main

    root = tmp_path / "folder"
    for label, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            (root / name / f"{i}.png").write_bytes(photo(64 + label, 48, fmt="PNG"))
        (root / name / "notes.txt").write_text("not an image")
    main(
        [
            "imagefolder",
            str(root),
            str(tmp_path / "out"),
            "--split",
            "train",
            "--samples-per-shard",
            "5",
        ]
    )
    assert imagefolder_classes(root) == ["cat", "dog", "emu"]
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert info["splits"]["train"]["shard_lengths"] == [5, 5, 2]
    loader = image_eval_loader(str(tmp_path / "out" / "train-*.tar"), 4, 32, num_workers=0)
    labels = {k: int(y) for b in loader for k, y in zip(b["key"], b["label"], strict=True)}
    assert labels == {f"{n}/{i}": c for c, n in enumerate(["cat", "dog", "emu"]) for i in range(4)}


def counted(decode, calls, sample, rng):
    calls.append(sample["__key__"])
    return decode(sample, rng)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_mid_epoch_resume_starts_each_worker_at_its_raw_sample_and_replays_the_stream(
    digits_dir, workers
):
    """The cursor saves each worker's raw position; a resume draws the samples before it
    undecoded and gives the same batches (keys and augmented pixels) as a run never stopped."""
    from tokenformer_mm.train.batches import EpochBatches

    def cursor():
        shards = str(digits_dir / "train-*.tar")
        return EpochBatches(image_train_loader(shards, 16, 32, num_workers=workers, seed=3))

    straight = cursor()
    expected = [next(straight) for _ in range(24)]
    assert not any(key.startswith("__") for key in expected[0])  # the tags stay inside
    for stop in (5, 13):
        first = cursor()
        for _ in range(stop):
            next(first)
        state = first.state_dict()
        boundary = state["raw_positions"]
        assert stop - max(workers, 1) < boundary["batch"] <= stop
        resumed = cursor()
        resumed.load_state_dict(state)
        assert resumed.state_dict() == state  # saved again before a batch: the same position
        decoded = []
        dataset = resumed.loader.dataset
        if workers == 0:  # decodes in this process: count them
            dataset.decode = partial(counted, dataset.decode, decoded)
        for want in expected[stop : stop + 6]:
            got = next(resumed)
            assert got["key"] == want["key"]
            assert torch.equal(got["image"], want["image"])
        if workers == 0:  # the 6 batches, not the 5 or 13 before them
            assert len(decoded) == 6 * 16
