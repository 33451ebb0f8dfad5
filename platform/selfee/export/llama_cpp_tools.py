"""llama.cpp's converter and GGUF reader, run in a child process.

They ship with llama.cpp (``convert_hf_to_gguf.py``, its ``conversion`` package and its own
``gguf-py``, unpacked from the llama-cpp-python source distribution by ``make``), and the
``gguf-py`` they need may differ from a ``gguf`` installed from PyPI, so they run in their
own interpreter with that folder first on ``sys.path``. Nothing of theirs is copied here.

    python -m selfee.export.llama_cpp_tools convert DIR MODEL OUT.gguf f16 [--pre gpt-2]
    python -m selfee.export.llama_cpp_tools inspect DIR FILE.gguf     # JSON on stdout
"""

from __future__ import annotations

import argparse
import collections
import json
import runpy
import sys
from pathlib import Path


def _use(converter_dir: Path) -> None:
    sys.path[:0] = [str(converter_dir), str(converter_dir / "gguf-py")]


def convert(converter_dir: Path, model: Path, out: Path, outtype: str, pre: str | None) -> None:
    """llama.cpp's converter, with the BPE pre-tokenizer declared when the converter does not
    recognize it by hash (a tokenizer trained from scratch never is)."""
    _use(converter_dir)
    from conversion import base

    recognize = base.TextModel.get_vocab_base_pre

    def declared(self: object, tokenizer: object) -> str:
        try:
            return recognize(self, tokenizer)
        except NotImplementedError:
            if pre is None:
                raise
            print(f"[export] pre-tokenizer declared: {pre}", file=sys.stderr)
            return pre

    base.TextModel.get_vocab_base_pre = declared
    sys.argv = ["convert_hf_to_gguf.py", str(model), "--outfile", str(out), "--outtype", outtype]
    runpy.run_path(str(converter_dir / "convert_hf_to_gguf.py"), run_name="__main__")


def inspect(converter_dir: Path, path: Path) -> dict:
    """What a GGUF file really holds: architecture, tensor types, bits per weight."""
    _use(converter_dir)
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    types: collections.Counter[str] = collections.Counter()
    elements = size = 0
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] += 1
        elements += int(tensor.n_elements)
        size += int(tensor.n_bytes)
    return {
        "architecture": bytes(arch.parts[arch.data[0]]).decode(),
        "tensor_types": dict(types.most_common()),
        "tensors": len(reader.tensors),
        "parameters": elements,
        "bits_per_weight": round(8 * size / max(elements, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("convert")
    for name in ("converter_dir", "model", "out", "outtype"):
        c.add_argument(name)
    c.add_argument("--pre")
    i = sub.add_parser("inspect")
    i.add_argument("converter_dir")
    i.add_argument("path")
    args = parser.parse_args()
    if args.what == "convert":
        convert(Path(args.converter_dir), Path(args.model), Path(args.out), args.outtype, args.pre)
    else:
        print(json.dumps(inspect(Path(args.converter_dir), Path(args.path))))


if __name__ == "__main__":
    main()
