"""How a variant becomes something that serves a batch: one protocol for the model zoo and a user's own models.

A variant names its *factory* by import path (`model: "package.module:factory"` in the pipeline spec; the zoo's,
`ipa.models.zoo:factory`, when it names none). The factory is called once per replica, and once per profiled
(variant, cores), as `factory(variant, device, weights)`: the variant's name, `"cpu"` or `"cuda"`, and the path of
its checkpoint or None. A factory with a `stage` parameter also gets the stage's spec (its kind, its variants,
`max_new_tokens`). It returns a callable that serves one batch: a list of inputs in, a list of JSON-serialisable
outputs out, in the same order. What the inputs are depends on the stage's kind (`INPUTS`).

The profiler times that callable, the replicas serve with it, and the simulator plans with what the profiler
measured: a user's variant goes the same way as a built-in one. `Runner` wraps the callable and checks what
comes back, so a factory that cannot be imported, raises or answers the wrong number of outputs is an error
naming the variant and the import path, not a traceback deep inside serving.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ipa.errors import ConfigError, IpaError
from ipa.spec import GENERATIVE, PipelineSpec, StageSpec, VariantSpec

ZOO = "ipa.models.zoo:factory"

# What a stage's callable is given, by kind (the README's "Your own pipeline" says the same).
INPUTS = {
    "detection": "RGB uint8 numpy arrays of shape (H, W, 3)",
    "classification": "RGB uint8 numpy arrays of shape (H, W, 3) (the whole image, or the crop a detector found)",
    "segmentation": "(image, box) pairs: an RGB uint8 (H, W, 3) array and [x1, y1, x2, y2] in its pixels",
    "speech-recognition": "float32 numpy arrays of 16 kHz mono samples",
    "question-answering": "str (the question)",
    "text-classification": "str",
    "translation": "str",
    "summarization": "str",
}


class ModelError(IpaError):
    """A variant's factory or its batch callable misbehaved; the message names the variant and the import path."""


@dataclass
class Runner:
    """A variant ready to serve batches: the factory's callable, with every answer checked."""

    variant: str
    kind: str
    source: str  # the factory's import path
    serve_batch: Callable[[list[Any]], Any]

    def __call__(self, items: list[Any]) -> list[Any]:
        try:
            out = self.serve_batch(items)
        except IpaError:
            raise
        except Exception as e:
            raise ModelError(f"{self._who()} raised {type(e).__name__} on a batch of {len(items)}: {e}") from e
        return self.check(out, len(items))

    def check(self, out: Any, n: int) -> list[Any]:
        """One JSON value per input, in a form the next stage can take (a detector's boxes, a generator's text)."""
        if not isinstance(out, list | tuple):
            raise ModelError(f"{self._who()} returned {type(out).__name__}, not a list (one output per input)")
        if len(out) != n:
            raise ModelError(f"{self._who()} returned {len(out)} outputs for a batch of {n} inputs: a batch "
                             "callable returns one output per input, in order")
        try:
            out = [jsonable(o) for o in out]
        except TypeError as e:
            raise ModelError(f"{self._who()} returned an output that is not JSON-serialisable ({e})") from None
        for o in out:
            self._check_kind(o)
        return out

    def _check_kind(self, o: Any) -> None:
        if self.kind == "detection":
            boxes = o.get("boxes") if isinstance(o, dict) else None
            if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 for b in boxes):
                raise ModelError(f"{self._who()}: a detection stage answers {{\"boxes\": [[x1, y1, x2, y2], ...], "
                                 f"...}} per image (the next stage gets the crops), got {_short(o)}")
        elif self.kind in GENERATIVE and gives_on(o, None) is None:
            raise ModelError(f"{self._who()}: a {self.kind} stage gives text on: answer a str or a dict with a "
                             f"'text' string per input, got {_short(o)}")

    def warmup_item(self) -> Any:
        """A small input of the stage's kind, for the first call (which allocates) before a replica serves."""
        return warmup_item(self.kind)

    def _who(self) -> str:
        return f"variant '{self.variant}' (model '{self.source}')"


def warmup_item(kind: str) -> Any:
    image = np.full((64, 64, 3), 127, np.uint8)
    if kind == "segmentation":
        return image, [0, 0, 64, 64]
    if kind == "speech-recognition":
        return np.zeros(16_000, np.float32)
    if kind in ("detection", "classification"):
        return image
    return "warm up"


def gives_on(output: Any, item: Any) -> Any:
    """What a text stage hands the next one: its output if that is text, or the output's 'text', else its input
    (a classifier passes its input on)."""
    if isinstance(output, str):
        return output
    if isinstance(output, dict) and isinstance(output.get("text"), str):
        return output["text"]
    return item


def jsonable(x: Any) -> Any:
    """Plain JSON values from what models commonly return (numpy and torch scalars and arrays); NaN and
    infinities become None (JSON has neither)."""
    if x is None or isinstance(x, str | bool | int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic | np.ndarray) or (hasattr(x, "detach") and hasattr(x, "tolist")):
        value = x.detach().cpu().tolist() if hasattr(x, "detach") else x.tolist()
        return jsonable(value)
    raise TypeError(f"a {type(x).__name__}")


def _short(o: Any) -> str:
    text = repr(o)
    return text if len(text) <= 120 else text[:117] + "..."


# -- building ------------------------------------------------------------------------------------

def factory_path(variant: VariantSpec) -> str:
    return variant.model or ZOO


def search_path(spec: PipelineSpec | None) -> list[str]:
    """Where a variant's module is looked for after the environment: the pipeline YAML's folder, then the
    working directory (the `ipa` command's own path does not include it)."""
    out = [spec.folder] if spec is not None and spec.folder else []
    cwd = os.getcwd()
    return out + ([cwd] if cwd not in out else [])


def load_factory(path: str, search: Sequence[str] = (), variant: str = "") -> Callable[..., Any]:
    """The object an import path `package.module:attribute` names, looked for in the environment, then in `search`."""
    module_name, sep, attr = path.partition(":")
    who = f"variant '{variant}': model '{path}'" if variant else f"model '{path}'"
    if not sep or not module_name or not attr:
        raise ConfigError(f"{who} is not an import path 'package.module:factory'")
    for folder in search:
        if folder not in sys.path:
            sys.path.append(folder)  # after the environment's own entries: an installed package wins
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        where = ", ".join(["the Python environment", *search])
        raise ConfigError(f"{who} cannot be imported ({e}); looked in {where}") from None
    except Exception as e:  # the module itself failed while importing
        raise ConfigError(f"{who}: importing {module_name} raised {type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{who}: module {module_name} ({getattr(module, '__file__', '?')}) has no '{attr}'")
    if not callable(obj):
        raise ConfigError(f"{who}: {attr} is a {type(obj).__name__}, not a callable factory")
    return obj


def checkpoint(variant: VariantSpec, weights_dir: str | Path | None) -> str | None:
    """The variant's checkpoint: its own `weights:`, else `--weights DIR`'s `DIR/<variant>` (a folder, e.g. a
    `transformers` one) or `DIR/<variant>.pth`, else None (random weights). A path that is not there is an error:
    nothing is ever downloaded in its place."""
    if variant.weights:
        path = Path(variant.weights)
        if not path.exists():
            raise ConfigError(f"variant '{variant.name}': weights {path} not found")
        return str(path)
    if not weights_dir:
        return None
    folder, state = Path(weights_dir) / variant.name, Path(weights_dir) / f"{variant.name}.pth"
    for path in (folder, state):
        if path.exists():
            return str(path)
    raise ConfigError(f"weights for '{variant.name}' not found: looked for {folder}/ (a transformers folder) and {state}")


def build(stage: StageSpec, variant: str, *, weights_dir: str | Path | None = None, device: str = "cpu",
          search: Sequence[str] = ()) -> Runner:
    """The variant of `stage` ready to serve, from its factory (the zoo's unless the spec names one)."""
    from ipa.models.zoo import stage_kind

    spec = stage.variant(variant)
    kind = stage_kind(stage)
    path = factory_path(spec)
    factory = load_factory(path, search, variant)
    weights = checkpoint(spec, weights_dir)
    kwargs = {"stage": stage.model_copy(update={"kind": kind})} if _takes_stage(factory) else {}
    try:
        served = factory(variant, device, weights, **kwargs)
    except IpaError:
        raise
    except Exception as e:
        raise ModelError(f"variant '{variant}' (model '{path}'): the factory raised {type(e).__name__}: {e}") from e
    if not callable(served):
        raise ModelError(f"variant '{variant}' (model '{path}'): the factory returned {type(served).__name__}, not a "
                         "callable that serves a batch (a list of inputs in, a list of outputs out)")
    return Runner(variant, kind, path, served)


def _takes_stage(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "stage" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_factories(spec: PipelineSpec) -> None:
    """Every variant's factory imports (cheap, before anything is started or built); an error names the first
    that does not."""
    search = search_path(spec)
    for stage in spec.stages:
        for v in stage.variants:
            if v.model:
                load_factory(v.model, search, v.name)
