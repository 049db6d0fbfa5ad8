"""The reference's config surface, measured (runs inside the transformers worker).

Two questions per config: which keys does transformers read while it builds the
config and the model and runs prefill plus a decode step, and which of them change
an activation when changed alone. Reads are seen by wrapping the config class's
attribute lookup (the stored key is recorded, after ``attribute_map``) and every
dict-valued attribute (``rope_parameters``: item reads, ``get``, ``in``; nested dicts too,
as Gemma-3 keys RoPE parameters by layer type). A key
read but absent from the config counts too: code that looks for it would honour it.

A key "changes" the output when some other value for it, alone, changes any
captured tensor bit for bit; "neutral" when every value tried leaves them all
equal; "rejected" when no other value could be built or run.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

if TYPE_CHECKING:  # torch (and checkpoint building) are the worker's: the key bookkeeping is tested without
    import torch

Capture = Callable[["torch.nn.Module"], dict[str, "torch.Tensor"]]

ABSENT = "<absent>"

# transformers' generic code looks for sub-configs and dtypes in every dict attribute;
# those lookups say nothing about a family, and label maps are a classifier's.
_IGNORED_DICTS = ("id2label", "label2id")

# Alternatives for string-valued keys: values transformers accepts for them.
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu", "gelu_new", "relu")
STRING_ALTERNATIVES: Mapping[str, tuple[str, ...]] = {
    "hidden_act": ACTIVATIONS, "hidden_activation": ACTIVATIONS, "activation_function": ACTIVATIONS,
    "rope_parameters.rope_type": ("default", "linear", "dynamic", "yarn"),
    "rope_parameters.type": ("default", "linear", "dynamic", "yarn"),  # rope_type's legacy name
    # Mixture-of-experts routing, as the families' modeling code names the choices.
    "scoring_func": ("softmax", "sigmoid", "sqrtsoftplus"), "topk_method": ("greedy", "group_limited_greedy"),
    "expert_selection_fn": ("softmax", "sigmoid"), "shared_expert_combination_strategy": ("average", "sum"),
}
# What another rope_type needs besides its name to be built at all.
ROPE_TYPE_PARAMETERS: Mapping[str, Mapping[str, Any]] = {
    "linear": {"factor": 2.0}, "dynamic": {"factor": 2.0},
    "yarn": {"factor": 2.0, "original_max_position_embeddings": 8},
}


class _RecordingDict(dict):
    """A config's nested dict that notes which of its keys are looked up (its own dict values too)."""

    def __init__(self, data: Mapping[str, Any], prefix: str, reads: dict[str, tuple[str, Any]]):
        super().__init__(data)
        self._prefix, self._reads = prefix, reads

    def _note(self, key: Any, how: str) -> None:
        if isinstance(key, str) and not key.startswith("_") and key != "dtype":
            self._reads.setdefault(f"{self._prefix}.{key}", (how, super().get(key, ABSENT)))

    def _recording(self, key: Any) -> Any:
        value = super().get(key)
        if isinstance(value, dict) and not isinstance(value, _RecordingDict) and isinstance(key, str):
            value = _RecordingDict(value, f"{self._prefix}.{key}", self._reads)
            super().__setitem__(key, value)
        return value

    def __getitem__(self, key: Any) -> Any:
        self._note(key, "item")
        super().__getitem__(key)  # a missing key raises KeyError as usual
        return self._recording(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key, "get")
        return self._recording(key) if super().__contains__(key) else default

    def __contains__(self, key: Any) -> bool:
        self._note(key, "in")
        return super().__contains__(key)


@contextmanager
def recording(reads: dict[str, tuple[str, Any]]) -> Iterator[None]:
    """Note every public config key read (``reads[key] = (how, value read)``) while the block runs."""
    from transformers import PretrainedConfig

    original = PretrainedConfig.__getattribute__

    def getattribute(self: Any, name: str) -> Any:
        if name.startswith("_"):
            return original(self, name)
        key = original(self, "attribute_map").get(name, name)
        try:
            value = original(self, name)
        except AttributeError:
            reads.setdefault(key, ("absent", ABSENT))
            raise
        if key in original(self, "__dict__") and not callable(value) and key not in _IGNORED_DICTS:
            reads.setdefault(key, ("attr", value))
            if isinstance(value, dict) and not isinstance(value, _RecordingDict):
                value = _RecordingDict(value, key, reads)
                original(self, "__dict__")[key] = value
        return value

    PretrainedConfig.__getattribute__ = getattribute
    try:
        yield
    finally:
        PretrainedConfig.__getattribute__ = original


def run_config(config: Mapping[str, Any], seed: int, capture: Capture, reads: dict[str, tuple[str, Any]] | None = None
               ) -> dict[str, torch.Tensor]:
    """Build ``config`` as parity's checkpoints are built (same seed, same weights) and capture a run."""
    import torch
    from transformers import AutoModelForCausalLM

    from parity import checkpoint as ckpt

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(ckpt.build_config(dict(config)), dtype=torch.float32,
                                                 **ckpt.REFERENCE_KERNELS)  # as the reference runs
        ckpt.randomize(model, seed)
        return model.eval()

    if reads is None:
        return capture(build())
    with recording(reads):
        return capture(build())


def put(config: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``config`` with ``key`` (``a``, ``a.b``, ``a.b.c``) set to ``value`` (another rope_type
    comes with the parameters it cannot be built without)."""
    out = copy.deepcopy(dict(config))
    *parents, last = key.split(".")
    inner = out
    for name in parents:
        inner[name] = dict(inner.get(name) or {})
        inner = inner[name]
    if _generic(key) == "rope_parameters.rope_type":
        inner.update(ROPE_TYPE_PARAMETERS.get(value, {}))
    inner[last] = value
    return out


def _generic(key: str) -> str:
    """A nested key without its middle levels (Gemma-3's ``rope_parameters.full_attention.rope_type`` is a
    ``rope_parameters.rope_type``)."""
    parts = key.split(".")
    return f"{parts[0]}.{parts[-1]}" if len(parts) > 2 else key


def alternatives(key: str, value: Any) -> list[Any]:
    """Other values to try for ``key``, most likely to be accepted first."""
    if _generic(key) in STRING_ALTERNATIVES:
        return [v for v in STRING_ALTERNATIVES[_generic(key)] if v != value]
    if isinstance(value, bool):
        return [not value]
    if key.endswith("partial_rotary_factor"):  # a fraction of the head: past 1 only the probe's wide heads build
        return [v for v in (0.5, 1.0) if v != value]
    if "window" in key and (isinstance(value, int) or value is None):
        return [v for v in (4, value * 2 if value else None) if v not in (None, value)]  # shorter than the probe prompt
    if isinstance(value, int):
        return [value * 2, value + 1] if value else [1, 4]
    if isinstance(value, float):
        return [value * 2, value / 2] if value else [0.5, 4.0]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [[v * 2 for v in value]]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        swapped = {"full_attention": "sliding_attention", "sliding_attention": "full_attention"}
        return [[swapped.get(value[0], value[0]), *value[1:]], [swapped.get(v, v) for v in value]]
    if value is None or value == ABSENT:
        return [4, 0.5, True, "silu"]
    return []


def _plain(value: Any) -> Any:
    """``value`` as JSON can carry it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def _fits(candidate: Any, value: Any) -> bool:
    """Whether a drawn value can stand in for ``value`` here: a list of floats only for one as long (LongRoPE's
    per-pair factors are sized to the head), a list of layer indices (MoE's mlp_only_layers) for any list."""
    if not isinstance(candidate, list):
        return True
    if not isinstance(value, list):
        return False
    return len(candidate) == len(value) or all(isinstance(v, int) and not isinstance(v, bool) for v in candidate)


def _same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    import torch

    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def aliases(config: Mapping[str, Any]) -> dict[str, str]:
    """The config class's other names for its keys (``attribute_map``: GPT-J's hidden_size is n_embd)."""
    from parity import checkpoint as ckpt

    return dict(ckpt.build_config(dict(config)).attribute_map)


def measure(config: Mapping[str, Any], seed: int, capture: Capture, skip: Sequence[str] = (),
            candidates: Mapping[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """Every key read for ``config``, with its effect when changed alone, under the names the
    config stores (an alias in ``config`` would override a changed stored key).

    ``skip``: keys already known to change the output (not measured again).
    ``candidates``: values to try first per key (the strategies' own draws, so that
    "changes" also says the drawn values act).
    """
    from parity import checkpoint as ckpt

    names = aliases(config)
    config = {names.get(k, k): v for k, v in config.items()}
    candidates = {names.get(k, k): v for k, v in (candidates or {}).items()}
    reads: dict[str, tuple[str, Any]] = {}
    baseline = run_config(config, seed, capture, reads)
    # A dict the config class fills in after it is first read (rope_parameters from its defaults) is a dict.
    stored = ckpt.build_config(dict(config)).to_dict()
    entries = []
    for key, (how, value) in sorted(reads.items()):
        value = stored[key] if isinstance(stored.get(key), dict) else value
        entry: dict[str, Any] = {"key": key, "read": how, "value": _plain(value)}
        if key in skip or isinstance(value, dict):  # a dict's own keys are measured one by one
            entries.append({**entry, "effect": "skipped"})
            continue
        if how == "absent":  # honoured if present, but not a key of this family's config class
            entries.append({**entry, "effect": "undefined"})
            continue
        mine = [v for v in (candidates or {}).get(key, ()) if v != value and _fits(v, value)]
        tried, error = [], ""
        effect = "rejected"
        others = [v for v in alternatives(key, value) if v not in mine]
        for candidate in mine + [v for i, v in enumerate(others) if v not in others[:i]]:
            try:
                changed = not _same(run_config(put(config, key, candidate), seed, capture), baseline)
            except Exception as exc:  # a value transformers refuses: try the next one
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                continue
            tried.append(candidate)
            effect = "changes" if changed else "neutral"
            if changed:
                break
        entries.append({**entry, "effect": effect, "tried": tried, "drawn_act": bool(mine) and effect == "changes"
                        and tried[-1] in mine, **({"error": error} if effect == "rejected" else {})})
    return entries
