"""The runtime layer: running a pipeline on Ray (DESIGN.md, "Layers"; docs/runtime.md, "Code map").

One module per noun of the protocol. Driver side: :mod:`~raykv.runtime.coordinator`
(``Pipeline.run``) and its parts :mod:`~raykv.runtime.failures`,
:mod:`~raykv.runtime.committer`, :mod:`~raykv.runtime.layout`,
:mod:`~raykv.runtime.feeding`, :mod:`~raykv.runtime.rebalancing`,
:mod:`~raykv.runtime.actors`; what is written into each epoch:
:mod:`~raykv.runtime.metadata`. Shard side: :mod:`~raykv.runtime.shard` (the actor) and
its parts :mod:`~raykv.runtime.aligner`, :mod:`~raykv.runtime.uploader`,
:mod:`~raykv.runtime.keygroups`, :mod:`~raykv.runtime.localdirs`; shared:
:mod:`~raykv.runtime.specs`. Importing this package imports nothing else.
"""
