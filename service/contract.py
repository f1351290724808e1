"""The model-repository contract, written once: imported by the service and by training."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Preprocessing(BaseModel):
    """How an uploaded image becomes this model's input tensor (the ``preprocessing`` entry of metadata)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(ge=1, le=4096)
    """Input height H of ``[-1, H, W, C]``."""
    width: int = Field(ge=1, le=4096)
    """Input width W of ``[-1, H, W, C]``."""
    color: Literal["grayscale", "rgb"]
    """``grayscale`` for C = 1, ``rgb`` for C = 3."""
    input_range: tuple[float, float] = (0.0, 255.0)
    """Input values for a black and for a white pixel; the map between them is linear."""
    resize: Literal["stretch", "center_crop", "digit"]
    """``stretch``: whole image to HxW; ``center_crop``: shorter side to fit, then centre crop;
    ``digit``: MNIST-style ink detection, bounding box, 20/28 fit, centre of mass centred."""

    @model_validator(mode="after")
    def _range_not_empty(self) -> Preprocessing:
        if self.input_range[0] == self.input_range[1]:
            raise ValueError("input_range must map black and white to different values")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3
