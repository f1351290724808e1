"""Types of service.core._finite, the C extension (service/core/_finite.c) that checks a float buffer's
values are finite from their bits."""

def all_finite(array: object) -> bool | None:
    """Whether every value of a C-contiguous native-order float16, float32 or float64 buffer is finite;
    None for any other buffer (numpy answers for those)."""
