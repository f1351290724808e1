"""Types of service.http._leaves, the C extension (service/http/_leaves.c) that packs a V2 JSON tensor's
numbers, as orjson parsed them, into an array's bytes in one pass."""

def floats(data: object, count: int, single: bool) -> bytes | None:
    """The numbers of ``data`` (a list, flat or evenly nested) as the bytes of ``count`` float32 values
    (``single``) or float64 values, row-major; None if ``data`` is not exactly that (a leaf that is not
    an exact int or float, a ragged nesting, another number of values). OverflowError for an int beyond
    any double."""
