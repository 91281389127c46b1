"""The reference OFA implementation (modelscope's `models/multi_modal/ofa/`) imported for parity tests.

modelscope is a test-only extra (`pip install --no-deps modelscope==1.40.2`). Its package `__init__` files pull
in the hub client and fairseq, so the OFA modules are loaded under stub parent packages whose `__path__` points
at the real folders: the submodules import normally and no package `__init__` runs. Two shims make them work
under transformers 5: the config reads `forced_bos_token_id`, which transformers 5 no longer sets by default, and
the Chinese tokenizer's module imports names transformers 5 moved; `vit.py` imports one fairseq name
(`fairseq.modules.LayerNorm`), served by a stub module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

_PKG = "modelscope.models.multi_modal.ofa"


def _modelscope_root() -> Path:
    spec = importlib.util.find_spec("modelscope")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the OFA parity tests need the reference implementation: pip install --no-deps modelscope==1.40.2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _stub_package(name: str, path: Path | None) -> types.ModuleType:
    mod = sys.modules.get(name)
    if mod is None:
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)] if path is not None else []
        sys.modules[name] = mod
    return mod


def _install_stubs() -> None:
    root = _modelscope_root()
    _stub_package("modelscope", root)
    _stub_package("modelscope.models", root / "models")
    _stub_package("modelscope.models.multi_modal", root / "models" / "multi_modal")
    _stub_package(_PKG, root / "models" / "multi_modal" / "ofa")
    _stub_package("modelscope.utils", root / "utils")
    if "modelscope.utils.constant" not in sys.modules:
        constant = types.ModuleType("modelscope.utils.constant")

        class ModelFile:
            VOCAB_FILE = "vocab.txt"

        constant.ModelFile = ModelFile
        sys.modules["modelscope.utils.constant"] = constant
    if "fairseq" not in sys.modules:
        fairseq = _stub_package("fairseq", None)
        modules = types.ModuleType("fairseq.modules")
        modules.LayerNorm = torch.nn.LayerNorm
        fairseq.modules = modules
        sys.modules["fairseq.modules"] = modules


def _shim_transformers() -> None:
    from transformers.models.bert import tokenization_bert

    if not hasattr(tokenization_bert, "BasicTokenizer"):  # moved in transformers 5; only the Chinese tokenizer uses it
        from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer, WordpieceTokenizer

        tokenization_bert.BasicTokenizer = BasicTokenizer
        tokenization_bert.WordpieceTokenizer = WordpieceTokenizer


@functools.cache
def reference():
    """(modeling_ofa, configuration_ofa, tokenization_ofa, sequence_generator) modules of the reference."""
    _install_stubs()
    _shim_transformers()
    modeling = importlib.import_module(_PKG + ".modeling_ofa")
    configuration = importlib.import_module(_PKG + ".configuration_ofa")
    tokenization = importlib.import_module(_PKG + ".tokenization_ofa")
    generator = importlib.import_module(_PKG + ".generate.sequence_generator")
    if "forced_bos_token_id" not in vars(configuration.OFAConfig):  # transformers 5 no longer defaults it
        configuration.OFAConfig.forced_bos_token_id = None
    return modeling, configuration, tokenization, generator
