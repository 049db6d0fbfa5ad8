"""The config surface of each family, measured: what the reference reads, what changes
its output, and what parity's strategies vary.

Every key transformers reads while it builds a family's config and model and runs
prefill plus a decode step (``parity.worker.surface``, in the reference worker) falls
in exactly one class:

- ``varied``: the strategies draw at least two values for it;
- ``pinned``: held on purpose, with the reason written in the registry
  (``registry.PINNED`` for every family, ``ArchSpec.pinned`` for one); a key the
  family's config class does not define (transformers reads it with a default) is
  pinned by that fact;
- ``neutral``: measured: changing it alone left every captured activation bit for bit
  equal, on every probe config;
- ``unclassified``: none of these, a blind spot (the tests fail on it).

Coverage is varied keys over keys that change the output. The probe configs are the
strategies' own first draws plus, where the family has ``rope_parameters``, the same
model under every RoPE scaling type transformers implements, so that each type's
parameters are read and measured too.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from parity import registry, strategies
from parity.pool import WorkerError, WorkerHandle
from parity.records import SurfaceCoverage
from parity.worker.contract import SurfaceRequest
from parity.worker.surface import put

ABSENT = "<absent>"  # as parity.worker.surface writes it

PROBE_PROMPT = tuple(range(3, 15))
"""One prompt of 12 tokens: longer than the drawn sliding windows (4, 7) and the shortest
drawn original contexts (8), so windows drop keys and scaled RoPE passes its threshold."""

PROBE_DRAWS = 3
"""Drawn configs probed per family: the plainest, then two random draws (then the switched-on probe)."""

VARIED_DRAWS = 300
"""Draws per family from which the varied keys are read off."""

# The RoPE probes: each scaling type with its plainest parameters, then with the overrides
# (rope_parameters keys) under which the rest of its parameters act: original contexts the
# probe prompt outgrows (llama3's and YaRN's thresholds, LongRoPE's long factors), and YaRN's
# mscale pair, which only counts when both are set and attention_factor is not.
ROPE_PROBES: Mapping[str, Sequence[Mapping[str, Any]]] = {
    "linear": ({},),
    "dynamic": ({},),
    "llama3": ({}, {"original_max_position_embeddings": 8}),
    # beta_fast moves YaRN's lower correction bound, dim * ln(original / (2 pi beta_fast)) / (2 ln theta),
    # only where that crosses a whole dimension: a small theta makes it do so at any drawn width.
    # The mscale pair gets a value the strategies never draw, so that every drawn one differs from it.
    "yarn": ({"rope_theta": 10.0}, {"original_max_position_embeddings": 8}, {"mscale": 0.7, "mscale_all_dim": 0.7}),
    "longrope": ({}, {"original_max_position_embeddings": 8}),
}


def _rotated(config: Mapping[str, Any]) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = min((r.get("partial_rotary_factor", 1.0) for r in registry.rope_sets(config).values()), default=1.0)
    return int(factor * head_dim)


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": {"c": 1}}}`` -> ``{"a.b.c": 1}`` (Gemma-3 nests RoPE parameters per layer type)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def drawn_values(drawn: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per flattened config key, the distinct values the configs drew (``ABSENT`` where a draw lacks it)."""
    configs = [flatten(c) for c in drawn]
    keys = sorted({k for c in configs for k in c})
    values: dict[str, list[Any]] = {}
    for key in keys:
        seen: list[Any] = []
        for c in configs:
            v = c.get(key, ABSENT)
            if v not in seen:
                seen.append(v)
        values[key] = seen
    return values


PROBE_EXECUTION = strategies.ExecutionSurface(modes=("tensor_parallel", "chunked_prefill", "prefix_cache"))
"""The execution modes drawn beside the probes' configs: those the stored measurement was drawn with (a mode drawn
more moves every later example's config draws, and the stored surface with them)."""


def probe_configs(arch: str, seed: int = 0) -> list[dict[str, Any]]:
    """The configs whose reads and effects make up the family's surface: the first draws, and the
    plainest draw under every RoPE scaling type with the family's plainest parameters (``strategies.rope_candidates``)."""
    spec = registry.get(arch)
    if spec.tier == "generic":
        # Its knobs are what this measures: drawn as if it had none (the same probes whatever was measured before),
        # then written at their defaults, so each is measured from the class's own value.
        drawn = [e.config for e in strategies.sample(arch, PROBE_DRAWS, seed, spec=replace(spec, knobs={}), execution=PROBE_EXECUTION)]
        return [{**c, **{k: values[0] for k, values in spec.knobs.items()}} for c in drawn]
    drawn = [e.config for e in strategies.sample(arch, PROBE_DRAWS, seed, execution=PROBE_EXECUTION)]
    drawn.append(_switched_on(arch, drawn))
    if "rope_parameters" not in drawn[0]:
        return drawn
    # The RoPE probes start from the draw that rotates the most dimensions: YaRN's correction bounds
    # move only on wide enough rotations.
    plain = _every_layer_type(arch, max(drawn, key=_rotated))
    variants = []
    for rope_type, overrides in ROPE_PROBES.items():
        plainest = {k: v[0] for k, v in strategies.rope_candidates(registry.get(arch), rope_type).items()}
        for override in overrides:
            params = {**plainest, **override}
            config = copy.deepcopy(plain)
            for path, plain_rope in registry.rope_sets(plain).items():
                rope = {"rope_type": rope_type, "rope_theta": plain_rope["rope_theta"],
                        **{k: v for k, v in params.items() if v != strategies.OMIT}}
                if "partial_rotary_factor" in plain_rope:
                    rope["partial_rotary_factor"] = plain_rope["partial_rotary_factor"]
                if rope_type == "longrope":
                    pairs = _rotated(plain) // 2
                    rope.update(strategies.longrope_ramps(pairs, **{k: t[-1] for k, t in strategies.LONGROPE_TOPS.items()}))
                    if registry.get(arch).top_level_original_context:
                        config["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
                _put(config, path, rope)
            variants.append(config)
    return drawn + variants


def _put(config: dict[str, Any], path: str, value: Any) -> None:
    """Set the (dotted) ``path`` of a nested config to ``value``."""
    *parents, last = path.split(".")
    for key in parents:
        config = config[key]
    config[last] = value


def _every_layer_type(arch: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with a layer of every type the family configures RoPE for (``ArchSpec.rope_layer_types``),
    so that each type's RoPE parameters are read: the types in turn, over at least as many layers."""
    types = registry.get(arch).rope_layer_types
    config = copy.deepcopy(dict(config))
    if types:
        layers = max(config["num_hidden_layers"], len(types))
        config.update(num_hidden_layers=layers, layer_types=[types[i % len(types)] for i in range(layers)])
    return config


def _switched_on(arch: str, drawn: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The deepest draw with every on/off knob on: keys that act only behind a switch
    (Qwen's sliding_window and max_window_layers behind use_sliding_window) act here,
    whatever the random draws happened to switch."""
    config = copy.deepcopy(max(drawn, key=lambda c: registry.canonical_config(arch, c)["num_hidden_layers"]))
    config.update({k: True for k, values in registry.get(arch).knobs.items()
                   if k in config and all(isinstance(v, bool) for v in values) and len(values) > 1})
    return config


@dataclass(frozen=True)
class KeySurface:
    key: str
    """The family's own key name (nested keys as ``rope_parameters.factor``)."""
    effect: str
    """Measured: ``changes``, ``neutral``, ``rejected`` (no other value could be built) or
    ``undefined`` (read with a default; not a key of the family's config class)."""
    cls: str
    """``varied``, ``pinned``, ``neutral`` or ``unclassified``."""
    reason: str = ""
    """Why a pinned key is pinned; what was measured otherwise."""
    drawn: list[Any] = field(default_factory=list)
    """Values the strategies drew (varied keys)."""
    drawn_act: bool | None = None
    """Varied keys: whether changing the key alone to a drawn value changed an activation."""
    default: Any = None
    """The value read in the probe config (keys that change the output)."""
    acting: Any = None
    """The value that, alone, changed an activation (keys that change the output)."""


@dataclass(frozen=True)
class FamilySurface:
    arch: str
    keys: list[KeySurface]
    rejected_configs: list[str] = field(default_factory=list)
    """Probe configs transformers refused to build (e.g. a RoPE type the family rejects), with why."""
    aliases: dict[str, str] = field(default_factory=dict)
    """The config class's other names for the keys (alias -> the stored name keys are listed under)."""
    knobs: dict[str, list[Any]] = field(default_factory=dict)
    """A generic-tier family's draws beyond its sizes (``generic_knobs``); empty for a registry entry."""

    @property
    def changing(self) -> list[KeySurface]:
        return [k for k in self.keys if k.effect == "changes"]

    @property
    def coverage(self) -> float:
        """Varied keys over keys that change the output (1.0 when nothing changes it)."""
        changing = self.changing
        return sum(k.cls == "varied" for k in changing) / len(changing) if changing else 1.0

    def of(self, cls: str) -> list[KeySurface]:
        return [k for k in self.keys if k.cls == cls]

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "coverage": self.coverage, **asdict(self)}


def merge_effects(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One effect per key over all probe configs: changes beats neutral beats rejected beats undefined."""
    rank = {"changes": 4, "neutral": 3, "rejected": 2, "undefined": 1, "skipped": 0}
    merged: dict[str, dict[str, Any]] = {}
    for e in entries:
        seen = merged.get(e["key"])
        if seen is None or rank[e["effect"]] > rank[seen["effect"]]:
            merged[e["key"]] = {**e, "drawn_act": e.get("drawn_act") or (seen or {}).get("drawn_act", False)}
        elif e.get("drawn_act"):
            seen["drawn_act"] = True
    return merged


def classify(arch: str, effects: Mapping[str, Mapping[str, Any]], drawn: Mapping[str, list[Any]],
             rejected_configs: Sequence[str] = (), aliases: Mapping[str, str] | None = None) -> FamilySurface:
    """Each key's class; ``drawn`` is keyed by the names the strategies write, ``effects`` by the
    stored names (``aliases`` maps the one to the other)."""
    spec = registry.get(arch)
    aliases = dict(aliases or {})
    drawn = {aliases.get(k, k): v for k, v in drawn.items()}
    pins = {**registry.PINNED, **spec.pinned}
    keys = []
    for key, e in sorted(effects.items()):
        if e["effect"] == "skipped":  # a dict: its own keys are measured one by one
            continue
        values = drawn.get(key, [])
        seen = {"default": e.get("value"), "acting": e["tried"][-1]} if e["effect"] == "changes" and e.get("tried") else {}
        if key in spec.pinned:  # a family's own pin says why drawing it shows nothing here
            keys.append(KeySurface(key, e["effect"], "pinned", spec.pinned[key], drawn=values, **seen))
        elif len(values) >= 2:
            acts = bool(e.get("drawn_act")) if e["effect"] != "undefined" else None
            keys.append(KeySurface(key, e["effect"], "varied", drawn=values, drawn_act=acts, **seen))
        elif key in pins:
            keys.append(KeySurface(key, e["effect"], "pinned", pins[key], **seen))
        elif e["effect"] == "undefined":
            keys.append(KeySurface(key, e["effect"], "pinned",
                                   "not a key of the family's config class: read with a default, "
                                   "released checkpoints of the family do not carry it"))
        elif e["effect"] == "neutral":
            keys.append(KeySurface(key, e["effect"], "neutral", f"no activation moved with {e.get('tried')}"))
        elif e["effect"] == "rejected" and spec.tier == "generic":  # nothing to draw: the reason is measured
            keys.append(KeySurface(key, e["effect"], "pinned", "the reference refused every other value of its "
                                   f"type tried: {e.get('error') or 'no other value is known for this string'}"))
        else:
            keys.append(KeySurface(key, e["effect"], "unclassified", e.get("error", ""), **seen))
    knobs = generic_knobs(spec, effects, keys) if spec.tier == "generic" else {}
    return FamilySurface(arch, keys, list(rejected_configs), aliases, knobs)


def generic_knobs(spec: registry.ArchSpec, effects: Mapping[str, Mapping[str, Any]], keys: Sequence[KeySurface]
                  ) -> dict[str, list[Any]]:
    """What a generic-tier family draws beyond its sizes: each key measured to change the output, but the sizes
    and the pinned keys (the values written with every draw among them), as its default (first) and the value
    that changed the output. A key inside a dict (``rope_parameters.rope_theta``) is drawn as the whole dict: the
    default dict, then that dict with one key changed (another ``rope_type`` with the parameters it needs)."""
    held = {*(spec.config_keys.get(k, k) for k in (*spec.sizes, "head_dim")), *registry.PINNED, *spec.pinned}
    knobs: dict[str, list[Any]] = {}
    for k in keys:
        top = k.key.split(".")[0]
        if k.effect != "changes" or k.acting is None or top in held or k.key in held:
            continue
        default = effects.get(top, {}).get("value") if top != k.key else k.default
        value = put({top: default}, k.key, k.acting)[top] if top != k.key else k.acting
        values = knobs.setdefault(top, [default])
        if value not in values:
            values.append(value)
    return {k: v for k, v in knobs.items() if len(v) > 1}


def _short(value: Any) -> str:
    return f"[{len(value)} values]" if isinstance(value, list) and len(value) > 4 else repr(value)


def render(surfaces: Sequence[FamilySurface], verbose: bool = False) -> str:
    """The per-family table ``parity surface`` prints."""
    lines = []
    for s in surfaces:
        lines.append(f"{s.arch}: coverage {s.coverage:.0%} ({sum(k.cls == 'varied' for k in s.changing)} of "
                     f"{len(s.changing)} keys that change the output are varied); "
                     + ", ".join(f"{len(s.of(c))} {c}" for c in ("varied", "pinned", "neutral", "unclassified")))
        for k in s.keys:
            if verbose or k.cls == "unclassified" or (k.effect == "changes" and k.cls != "varied") \
                    or k.drawn_act is False:
                note = k.reason or (f"drawn {', '.join(_short(v) for v in k.drawn)}"
                                    + ("" if k.drawn_act else "; no drawn value acted"))
                lines.append(f"  {k.key:42} {k.effect:9} {k.cls:12} {note}")
        lines += [f"  probe config refused: {r}" for r in s.rejected_configs]
    return "\n".join(lines)


def sized_candidates(config: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Drawn values of the keys whose values are sized to this config (LongRoPE's per-pair factors),
    as the strategies draw them for its rotated width."""
    return {f"{path}.{key}": [strategies.longrope_ramps(len(rope["short_factor"]), **{key: top})[key] for top in tops]
            for path, rope in registry.rope_sets(config).items() if rope.get("rope_type") == "longrope"
            for key, tops in strategies.LONGROPE_TOPS.items()}


def measure(worker: WorkerHandle, arch: str, seed: int = 0, timeout: float = 600.0) -> FamilySurface:
    """Probe every config of ``arch`` in a reference worker and classify what it read."""
    spec = registry.get(arch)
    drawn = _drawn(arch, seed)
    candidates = {k: [v for v in values if v != ABSENT] for k, values in drawn.items() if len(values) >= 2}
    # Every value the strategies list for a RoPE parameter, also those a sample happened to miss.
    paths = [f"rope_parameters.{t}" for t in spec.rope_layer_types] or ["rope_parameters"]
    for params in strategies.ROPE_SCALING.values():
        for key, values in params.items():
            for path in paths:
                listed = candidates.setdefault(f"{path}.{key}", [])
                listed += [v for v in values if v != strategies.OMIT and v not in listed]
    entries: list[dict[str, Any]] = []
    refused: list[str] = []
    names: dict[str, str] = {}
    for config in probe_configs(arch, seed):
        # Settled: keys known to change the output, by a drawn value where the strategies draw some.
        changing = sorted(k for k, e in merge_effects(entries).items()
                          if e["effect"] == "changes" and (e.get("drawn_act") or k not in candidates))
        try:
            reply = worker.call(SurfaceRequest(config=config, seed=seed, prompts=[list(PROBE_PROMPT)], decode_steps=1,
                                               modules=asdict(spec.modules), skip=changing,
                                               candidates={**candidates, **sized_candidates(config)}), timeout)
        except WorkerError as exc:
            rope = "/".join(r.get("rope_type", "default") for r in registry.rope_sets(config).values())
            refused.append(f"rope_type {rope or 'default'}: {exc.reason.splitlines()[0][:200]}")
            continue
        entries += reply.entries
        names.update(reply.aliases)
    return classify(arch, merge_effects(entries), drawn, refused, names)


def measured_path(transformers_version: str) -> Path:
    return registry.surface_path(transformers_version)


def write_measured(surfaces: Sequence[FamilySurface], transformers_version: str) -> Path:
    """Store each family's measured effects (not the classes: those follow the strategies and pins)."""
    path = measured_path(transformers_version)
    known = dict(registry.measured_surfaces(transformers_version))
    known.update({s.arch: {"effects": {k.key: k.effect for k in s.keys}, "aliases": s.aliases,
                           **({"knobs": s.knobs} if s.knobs else {})} for s in surfaces})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(known.items())), indent=1, sort_keys=True) + "\n")
    registry.measured_surfaces.cache_clear()
    _coverage.cache_clear()
    registry.generic_knobs.cache_clear()
    registry.generic_entries.cache_clear()
    return path


def coverage(archs: Iterable[str], transformers_version: str,
             configs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> dict[str, SurfaceCoverage]:
    """Each family's coverage from the stored measurement for this transformers version and today's
    strategies and pins; families not measured on that version are left out. With ``configs`` (a run's
    configs by family), also which of the varied keys those configs exercised."""
    stored = registry.measured_surfaces(transformers_version)
    out = {}
    for arch in archs:
        if arch not in stored or registry.lookup(arch) is None:
            continue
        c = _coverage(arch, transformers_version)
        if configs and configs.get(arch):
            c = c.model_copy(update={"exercised": exercised(arch, configs[arch], c.varied_keys,
                                                            stored[arch]["aliases"])})
        out[arch] = c
    return out


def exercised(arch: str, configs: Sequence[Mapping[str, Any]], varied: Sequence[str],
              aliases: Mapping[str, str]) -> list[str]:
    """The varied keys (stored names) that ``configs`` drew at two values or more."""
    drawn = drawn_values(configs)
    moved = {aliases.get(k, k) for k, values in drawn.items() if len(values) >= 2}
    return [k for k in varied if k in moved]


# Reports are rewritten as examples finish: the stored file (registry.measured_surfaces), the draws and the
# classes are the same each time, so each is read or computed once per process (write_measured forgets them).
@functools.lru_cache(maxsize=None)
def _drawn(arch: str, seed: int) -> dict[str, list[Any]]:
    spec = registry.get(arch)
    configs = [e.config for e in strategies.sample(arch, VARIED_DRAWS, seed, execution=PROBE_EXECUTION)]
    if spec.tier == "generic":
        # Its knobs are drawn by construction, any one at any of its values (strategies.knobs_off_default), but
        # dozens of them share two moves per draw: a sample misses some, which count all the same.
        configs += [{**configs[0], key: v} for key, values in spec.knobs.items() for v in values]
    return drawn_values(configs)


@functools.lru_cache(maxsize=None)
def _coverage(arch: str, transformers_version: str) -> SurfaceCoverage:
    measured = registry.measured_surfaces(transformers_version)[arch]
    s = classify(arch, {k: {"key": k, "effect": e} for k, e in measured["effects"].items()},
                 _drawn(arch, 0), aliases=measured["aliases"])
    return SurfaceCoverage(
        transformers=transformers_version, coverage=s.coverage, varied=sum(k.cls == "varied" for k in s.changing),
        varied_keys=[k.key for k in s.changing if k.cls == "varied"],
        changing=len(s.changing), pinned={k.key: k.reason for k in s.changing if k.cls == "pinned"},
        unclassified=[k.key for k in s.of("unclassified")])
