"""tools/digit_folder.py writes MNIST digits as the image folder the trainer reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import digit_folder
from training import folderlayout


def test_the_first_images_of_each_class_are_written_rotated(tmp_path: Path) -> None:
    images = np.zeros((6, 28, 28, 1), np.uint8)
    images[:, 0, :, 0] = 255  # a bar along the top row
    labels = np.array([0, 1, 0, 1, 0, 1])
    count = digit_folder.write_folder(tmp_path, images, labels, ["zero", "one"], per_class=2, rotate=90)
    assert count == 4
    assert sorted(p.name for p in (tmp_path / "zero").iterdir()) == ["00000.png", "00002.png"]
    pixels = np.asarray(Image.open(tmp_path / "one" / "00001.png"))
    assert pixels.shape == (28, 28) and pixels[:, 0].min() == 255  # the bar is now the left column


def test_the_command_writes_a_folder_the_trainer_accepts(tmp_path: Path) -> None:
    assert digit_folder.main([str(tmp_path / "digits"), "--per-class", "3", "--split", "test"]) == 0
    layout = folderlayout.scan(tmp_path / "digits")
    assert list(layout.classes) == [str(d) for d in range(10)]
    assert len(layout.train.labels) == 30


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        digit_folder.main([str(tmp_path), "--per-class", "0"])
    assert caught.value.code == 2
