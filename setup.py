# The C extensions: service.grpc._h2 (the gRPC server's HTTP/2 session over libnghttp2),
# service.http._leaves (a JSON tensor's numbers packed in one pass), service.grpc._wire (ModelInfer
# messages of the plain form read and written without message objects) and service.core._finite (a
# decoded input's finite-value check without numpy's temporaries); the project's metadata stays in
# pyproject.toml. Building needs a C compiler and nghttp2's header and library: Debian's libnghttp2-dev
# provides both (`tools/system-deps.sh build`, which the Makefile runs first).
# DIGITS_SERVING_BUILD_H2=0 installs the package without either, for an image that serves nothing (the
# trainer's); such an install serves gRPC only with SERVE_GRPC_SERVER=grpcio, and reads JSON tensors with
# the Python checks alone, ModelInfer messages with protobuf alone, and checks values with numpy alone
# (the same values, more CPU).
import os
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup


def _nghttp2_header_found() -> bool:
    dirs = [Path(sysconfig.get_config_var("INCLUDEDIR") or "/usr/include"), Path("/usr/include")]
    dirs += [Path(p) for p in os.environ.get("CPATH", "").split(os.pathsep) if p]
    return (
        any((d / "nghttp2" / "nghttp2.h").is_file() for d in dirs)
        or Path("/usr/local/include/nghttp2/nghttp2.h").is_file()
    )


extensions = []
if os.environ.get("DIGITS_SERVING_BUILD_H2", "1") != "0":
    if not _nghttp2_header_found():
        sys.exit(
            "error: the gRPC front end (service/grpc/_h2.c) needs nghttp2's header: apt-get install "
            "libnghttp2-dev (Debian, Ubuntu), dnf install libnghttp2-devel, brew install nghttp2 "
            "(then CPATH=$(brew --prefix)/include); or DIGITS_SERVING_BUILD_H2=0 to install without it"
        )
    extensions.append(
        Extension(
            "service.grpc._h2",
            ["service/grpc/_h2.c"],
            libraries=["nghttp2"],
            # nghttp2 >= 1.60 deprecates the v1 (ssize_t) API this module uses to build against 1.52.
            extra_compile_args=["-Wall", "-Wextra", "-Wno-deprecated-declarations"],
        )
    )
    extensions.append(
        Extension("service.http._leaves", ["service/http/_leaves.c"], extra_compile_args=["-Wall", "-Wextra"])
    )
    extensions.append(
        Extension("service.grpc._wire", ["service/grpc/_wire.c"], extra_compile_args=["-Wall", "-Wextra"])
    )
    extensions.append(
        Extension("service.core._finite", ["service/core/_finite.c"], extra_compile_args=["-Wall", "-Wextra"])
    )

setup(ext_modules=extensions)
