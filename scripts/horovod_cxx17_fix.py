"""Make Horovod 0.28.1's PyTorch extension build against torch >= 2.1.

Why: Horovod 0.28.1 compiles its torch extension as C++14 (and strips any -std= flag from
CXXFLAGS), but torch >= 2.1's headers need C++17. Compiling that one extension as C++17 is not
enough: it then fails to link, because the Gloo static library (built as C++14) and the C++17
objects both define `gloo::rendezvous::Store::kDefaultTimeout`. Horovod's top-level CMakeLists
already knows how to build a second copy of Gloo as C++17 (`compatible17_gloo`) for C++17
TensorFlow builds; this fix lets the torch extension use that same mechanism.

Two edits, each checked so the script fails loudly on any other Horovod source tree:
  1. horovod/torch/CMakeLists.txt: when torch >= 2.1, build as C++17, link compatible17_gloo
     instead of gloo, and tell the parent scope (Pytorch_CXX17).
  2. CMakeLists.txt: also build compatible17_gloo when Pytorch_CXX17 is set, with the C++ ABI
     that torch uses.

Usage: python horovod_cxx17_fix.py HOROVOD_SOURCE_DIR   (idempotent)
"""
import pathlib
import sys

MARK = "# deepmine: torch>=2.1 C++17 fix"


def replace_once(text: str, old: str, new: str, where: pathlib.Path) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"{where}: expected exactly one occurrence of {old!r}; "
                         "is this the Horovod 0.28.1 sdist?")
    return text.replace(old, new)


def patch(src: pathlib.Path) -> None:
    torch_cmake = src / "horovod" / "torch" / "CMakeLists.txt"
    top_cmake = src / "CMakeLists.txt"
    text = torch_cmake.read_text()
    if MARK in text:
        return
    text = replace_once(
        text,
        "if(HAVE_GLOO)\n    if (Pytorch_CXX11)",
        f"{MARK}\n"
        "set(Pytorch_CXX17 FALSE)\n"
        "if(NOT Pytorch_VERSION VERSION_LESS \"2.1.0\")\n"
        "    set(Pytorch_CXX17 TRUE)\n"
        "endif()\n"
        "if(HAVE_GLOO AND Pytorch_CXX17)\n"
        "    list(APPEND PYTORCH_LINKER_LIBS compatible17_gloo)\n"
        "elseif(HAVE_GLOO)\n    if (Pytorch_CXX11)",
        torch_cmake)
    text = replace_once(
        text,
        "set(Pytorch_CXX11 ${Pytorch_CXX11} PARENT_SCOPE)\n"
        "if(NOT Pytorch_VERSION VERSION_LESS \"1.5.0\")\n"
        "    set(CMAKE_CXX_STANDARD 14)\n"
        "endif()",
        "set(Pytorch_CXX11 ${Pytorch_CXX11} PARENT_SCOPE)\n"
        "set(Pytorch_CXX17 ${Pytorch_CXX17} PARENT_SCOPE)\n"
        "if(Pytorch_CXX17)\n"
        "    set(CMAKE_CXX_STANDARD 17)\n"
        "elseif(NOT Pytorch_VERSION VERSION_LESS \"1.5.0\")\n"
        "    set(CMAKE_CXX_STANDARD 14)\n"
        "endif()",
        torch_cmake)
    top = top_cmake.read_text()
    top = replace_once(
        top,
        "if(HAVE_GLOO AND (DEFINED Tensorflow_CXX17 AND Tensorflow_CXX17))",
        f"{MARK}\n"
        "if(HAVE_GLOO AND ((DEFINED Tensorflow_CXX17 AND Tensorflow_CXX17) OR "
        "(DEFINED Pytorch_CXX17 AND Pytorch_CXX17)))",
        top_cmake)
    top = replace_once(
        top,
        "    if (Tensorflow_CXX11)\n        target_compile_definitions(compatible17_gloo PRIVATE _GLIBCXX_USE_CXX11_ABI=1)",
        "    if (Tensorflow_CXX11 OR (Pytorch_CXX17 AND Pytorch_CXX11))\n"
        "        target_compile_definitions(compatible17_gloo PRIVATE _GLIBCXX_USE_CXX11_ABI=1)",
        top_cmake)
    torch_cmake.write_text(text)
    top_cmake.write_text(top)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    patch(pathlib.Path(sys.argv[1]))
    print(f"patched {sys.argv[1]} for torch >= 2.1 (C++17 + compatible17_gloo)")
