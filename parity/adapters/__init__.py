"""Engine adapters. Each module runs inside its engine's worker and maps that
engine's modules and conventions onto :mod:`parity.schema`; nothing outside the
module knows them. An adapter module exposes ``Adapter(device)``, a subclass of
:class:`parity.adapters.base.EngineAdapter`, which owns everything the engines share.
"""
