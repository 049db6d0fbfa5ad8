"""Which families a change can affect, from where the engine implements each one.

The engine says, per architecture, which module defines its class and which of its other
model modules that one takes names from (``ModulesRequest``). A changed module is then:

* a family's own model module, or one its model module uses (a port built on another
  family's classes, the models' shared helpers): that family;
* another model module (a port parity does not test): no family;
* anything else (rotary embeddings, norms, activations, attention, linear layers, the
  loader, the engine core): shared code, so every family.
"""

from __future__ import annotations

from typing import Mapping


def affected(changed: list[str], modules: Mapping[str, list[str]], families: Mapping[str, str]) -> dict[str, str]:
    """``changed``: dotted module names; ``modules``: architecture -> [its module, modules it uses];
    ``families``: family -> architecture. Returns each affected family with the reason, in ``families`` order."""
    models = {own.rpartition(".")[0] for own, *_ in modules.values()}
    reasons: dict[str, str] = {}
    for module in changed:
        hit = {f: (f"its model module {module}" if used[0] == module else f"{module}, which its model module uses")
               for f, arch in families.items() if module in (used := modules.get(arch, [""]))}
        if not hit and module.rpartition(".")[0] not in models:
            hit = {f: f"shared code {module}" for f in families}
        for family, reason in hit.items():
            reasons.setdefault(family, reason)
    return {f: reasons[f] for f in families if f in reasons}
