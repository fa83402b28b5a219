"""The typed snapshot :func:`meshalloc.stats` returns (docs/python.md).

Kept out of ``meshalloc/__init__.py`` because ``dataclasses`` costs a few
milliseconds to import and the package is imported at start-up by the
``MESHALLOC=1`` hook; this module is loaded on the first ``stats()`` call.

Three kinds of fields:

* the core's stats table (``mesh_stats_name``), every field by the core's
  name, in the core's order (``CORE_FIELDS``; a test checks that the list
  equals the core's, so the two cannot drift apart);
* what the CPython hooks did (``HOOK_FIELDS``): for each PyMem domain the
  blocks meshalloc handed out, reallocated and freed, and the blocks it did
  not own that it handed to the wrapped allocator; plus the totals
  ``foreign_frees`` / ``foreign_reallocs``;
* the process: ``pss_bytes`` and ``installed_domains``;
* ``size_classes``: per size class in use, its spans and how full they are
  (:class:`SizeClassStats`, from the core's ``mesh_class_stats``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, Mapping, Sequence, Tuple

# The core's stats table, in the core's order (csrc/core/stats.c,
# docs/options.md). tests/test_python_stats.py compares it with the core.
CORE_FIELDS: Tuple[str, ...] = (
    "mesh_count",
    "meshed_pages",
    "meshed_pages_hwm",
    "meshed_pages_total",
    "mesh_aliases",
    "arena_mappings",
    "arena_mappings_hwm",
    "mesh_passes",
    "mesh_pause_ns_total",
    "mesh_pause_ns_max",
    "mesh_pause_cpu_ns_max",
    "mesh_pause_over_bound",
    "mesh_pause_cpu_over_bound",
    "mesh_pause_lt_100us",
    "mesh_pause_lt_500us",
    "mesh_pause_lt_1ms",
    "mesh_pause_lt_2ms",
    "mesh_pause_lt_5ms",
    "mesh_pause_ge_5ms",
    "mesh_bytes_copied",
    "mesh_adjacent",
    "mesh_budget_stops",
    "mesh_pace_level",
    "mesh_paced",
    "passes_triggered",
    "meshes_triggered",
    "pages_triggered",
    "pass_ns_triggered",
    "passes_thread",
    "meshes_thread",
    "pages_thread",
    "pass_ns_thread",
    "passes_compact",
    "meshes_compact",
    "pages_compact",
    "pass_ns_compact",
    "mesher_thread_starts",
    "mesh_barrier_waits",
    "spans_alloc_count",
    "spans_free_count",
    "spans_live",
    "spans_hwm",
    "large_alloc_count",
    "large_free_count",
    "large_bytes_in_use",
    "direct_alloc_count",
    "direct_free_count",
    "direct_bytes_in_use",
    "span_pages",
    "dirty_pages",
    "arena_top_pages",
    "pages_punched",
    "pages_decayed",
    "fresh_pages_total",
    "punch_calls",
    "thread_heaps_created",
    "thread_heaps_live",
    "thread_heap_bytes",
    "fork_count",
    "fork_copy_bytes_last",
    "fork_copy_ns_last",
    "fork_copy_ns_max",
    "double_free_count",
    "invalid_free_count",
    "orphan_allocs",
    "spans_pinned",
    "syscalls_in_flight_skips",
    "promoted_pages",
    "retired_pages",
    "warnings_repeated",
    "bytes_in_use_published",
    "bytes_in_use_published_ns",
    "small_bytes_in_use",
    "small_objects_in_use",
    "bytes_in_use",
    "arena_reserved_bytes",
    "arena_base",
    "arena_committed_bytes",
    "metadata_bytes",
    "meshing_available",
    "meshed_bytes_per_mapping",
    "arena_memfd_bytes",
)

DOMAINS: Tuple[str, ...] = ("raw", "mem", "obj")

# Per-domain hook counters, as the extension names them (pymodule.c,
# hook_counts()): "<domain>_<counter>".
HOOK_COUNTERS: Dict[str, str] = {
    "allocs": "blocks meshalloc handed out through this domain's malloc and "
              "calloc (a realloc of NULL counts as a malloc)",
    "reallocs": "realloc calls on a block meshalloc owns (served by meshalloc)",
    "frees": "frees of blocks meshalloc owns",
    "foreign_reallocs": "realloc calls on a block meshalloc does not own, handed "
                        "to the wrapped allocator (never migrated)",
    "foreign_frees": "frees of blocks meshalloc does not own, handed to the "
                     "wrapped allocator",
}

HOOK_FIELDS: Tuple[str, ...] = tuple(
    "%s_%s" % (d, c) for d in DOMAINS for c in HOOK_COUNTERS
)

# Documentation of every field that is not the core's (docs/options.md and
# docs/python.md list them; tests/test_docs.py checks that).
PY_FIELD_DOCS: Dict[str, str] = {}
for _d in DOMAINS:
    for _c, _doc in HOOK_COUNTERS.items():
        PY_FIELD_DOCS["%s_%s" % (_d, _c)] = "%s: %s" % (_d.upper(), _doc)
del _d, _c, _doc
PY_FIELD_DOCS.update(
    {
        "foreign_frees": "foreign frees of all domains: raw_ + mem_ + obj_foreign_frees",
        "foreign_reallocs": "foreign reallocs of all domains: raw_ + mem_ + "
                            "obj_foreign_reallocs",
        "pss_bytes": "proportional set size of the whole process "
                     "(/proc/self/smaps_rollup), bytes; only read by stats(pss=True), "
                     "else 0",
        "installed_domains": "the PyMem domains whose new blocks come from "
                             "meshalloc now, e.g. (\"mem\", \"obj\")",
        "size_classes": "per size class with spans: object_size, span_bytes, spans "
                        "(attached/partial/full), slots, objects_in_use, meshed_spans "
                        "and occupancy (objects_in_use / slots)",
        "extra": "fields the core reports that this version of the package does "
                 "not know (a preloaded libmesh.so of another version); normally "
                 "empty",
    }
)


# The fields of mesh_class_stats_t (csrc/mesh.h), in order.
CLASS_FIELDS: Tuple[str, ...] = (
    "object_size",
    "span_bytes",
    "spans",
    "spans_attached",
    "spans_partial",
    "spans_full",
    "slots",
    "objects_in_use",
    "meshed_spans",
)


@dataclass(frozen=True)
class SizeClassStats:
    """One size class: its physical spans by state, their slots and live
    objects, and how many virtual spans were meshed onto them."""

    object_size: int = 0
    span_bytes: int = 0
    spans: int = 0
    spans_attached: int = 0
    spans_partial: int = 0
    spans_full: int = 0
    slots: int = 0
    objects_in_use: int = 0
    meshed_spans: int = 0

    @property
    def occupancy(self) -> float:
        """Live objects / slots of the class's spans (0.0 with no spans)."""
        return self.objects_in_use / self.slots if self.slots else 0.0

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {name: getattr(self, name) for name in CLASS_FIELDS}
        d["occupancy"] = round(self.occupancy, 4)
        return d


@dataclass(frozen=True)
class Stats:
    """A snapshot of meshalloc's counters (:func:`meshalloc.stats`).

    Every field is an ``int`` except ``installed_domains`` (a tuple of
    domain names) and ``extra`` (a dict, normally empty). The core's fields
    have the core's names (docs/options.md); the hook counters are exact
    per-thread counts summed when read (docs/python.md). ``to_dict()`` and
    ``to_json()`` give plain data.
    """

    # ---- the core's stats table (CORE_FIELDS, the core's order) ----
    mesh_count: int = 0
    meshed_pages: int = 0
    meshed_pages_hwm: int = 0
    meshed_pages_total: int = 0
    mesh_aliases: int = 0
    arena_mappings: int = 0
    arena_mappings_hwm: int = 0
    mesh_passes: int = 0
    mesh_pause_ns_total: int = 0
    mesh_pause_ns_max: int = 0
    mesh_pause_cpu_ns_max: int = 0
    mesh_pause_over_bound: int = 0
    mesh_pause_cpu_over_bound: int = 0
    mesh_pause_lt_100us: int = 0
    mesh_pause_lt_500us: int = 0
    mesh_pause_lt_1ms: int = 0
    mesh_pause_lt_2ms: int = 0
    mesh_pause_lt_5ms: int = 0
    mesh_pause_ge_5ms: int = 0
    mesh_bytes_copied: int = 0
    mesh_adjacent: int = 0
    mesh_budget_stops: int = 0
    mesh_pace_level: int = 0
    mesh_paced: int = 0
    passes_triggered: int = 0
    meshes_triggered: int = 0
    pages_triggered: int = 0
    pass_ns_triggered: int = 0
    passes_thread: int = 0
    meshes_thread: int = 0
    pages_thread: int = 0
    pass_ns_thread: int = 0
    passes_compact: int = 0
    meshes_compact: int = 0
    pages_compact: int = 0
    pass_ns_compact: int = 0
    mesher_thread_starts: int = 0
    mesh_barrier_waits: int = 0
    spans_alloc_count: int = 0
    spans_free_count: int = 0
    spans_live: int = 0
    spans_hwm: int = 0
    large_alloc_count: int = 0
    large_free_count: int = 0
    large_bytes_in_use: int = 0
    direct_alloc_count: int = 0
    direct_free_count: int = 0
    direct_bytes_in_use: int = 0
    span_pages: int = 0
    dirty_pages: int = 0
    arena_top_pages: int = 0
    pages_punched: int = 0
    pages_decayed: int = 0
    fresh_pages_total: int = 0
    punch_calls: int = 0
    thread_heaps_created: int = 0
    thread_heaps_live: int = 0
    thread_heap_bytes: int = 0
    fork_count: int = 0
    fork_copy_bytes_last: int = 0
    fork_copy_ns_last: int = 0
    fork_copy_ns_max: int = 0
    double_free_count: int = 0
    invalid_free_count: int = 0
    orphan_allocs: int = 0
    spans_pinned: int = 0
    syscalls_in_flight_skips: int = 0
    promoted_pages: int = 0
    retired_pages: int = 0
    warnings_repeated: int = 0
    bytes_in_use_published: int = 0
    bytes_in_use_published_ns: int = 0
    small_bytes_in_use: int = 0
    small_objects_in_use: int = 0
    bytes_in_use: int = 0
    arena_reserved_bytes: int = 0
    arena_base: int = 0
    arena_committed_bytes: int = 0
    metadata_bytes: int = 0
    meshing_available: int = 0
    meshed_bytes_per_mapping: int = 0
    arena_memfd_bytes: int = 0

    # ---- the CPython hooks (HOOK_FIELDS) ----
    raw_allocs: int = 0
    raw_reallocs: int = 0
    raw_frees: int = 0
    raw_foreign_reallocs: int = 0
    raw_foreign_frees: int = 0
    mem_allocs: int = 0
    mem_reallocs: int = 0
    mem_frees: int = 0
    mem_foreign_reallocs: int = 0
    mem_foreign_frees: int = 0
    obj_allocs: int = 0
    obj_reallocs: int = 0
    obj_frees: int = 0
    obj_foreign_reallocs: int = 0
    obj_foreign_frees: int = 0
    foreign_frees: int = 0
    foreign_reallocs: int = 0

    # ---- the process ----
    pss_bytes: int = 0
    installed_domains: Tuple[str, ...] = ()
    size_classes: Tuple[SizeClassStats, ...] = ()
    extra: Dict[str, int] = field(default_factory=dict, hash=False)

    CORE_FIELDS: ClassVar[Tuple[str, ...]] = CORE_FIELDS
    HOOK_FIELDS: ClassVar[Tuple[str, ...]] = HOOK_FIELDS

    @classmethod
    def from_parts(
        cls,
        core: Mapping[str, int],
        hooks: Mapping[str, int],
        installed_domains: Tuple[str, ...] = (),
        pss_bytes: int = 0,
        classes: Sequence[Sequence[int]] = (),
    ) -> "Stats":
        """Build a snapshot from the core's table (``{name: value}``), the
        extension's hook counts, the core's per-class tuples (classes with
        no span and nothing meshed are left out) and the rest. A core field
        this class does not declare goes to ``extra``; one the core lacks
        stays 0."""
        values: Dict[str, Any] = {}
        extra: Dict[str, int] = {}
        for name, value in core.items():
            if name in _CORE_SET:
                values[name] = int(value)
            else:
                extra[name] = int(value)
        for name in HOOK_FIELDS:
            values[name] = int(hooks.get(name, 0))
        values["foreign_frees"] = sum(values[d + "_foreign_frees"] for d in DOMAINS)
        values["foreign_reallocs"] = sum(values[d + "_foreign_reallocs"] for d in DOMAINS)
        size_classes = tuple(SizeClassStats(*(int(v) for v in c[:len(CLASS_FIELDS)]))
                             for c in classes if c[2] or c[8])
        return cls(pss_bytes=int(pss_bytes), installed_domains=tuple(installed_domains),
                   size_classes=size_classes, extra=extra, **values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Stats":
        """The inverse of :meth:`to_dict` (e.g. after ``json.loads``)."""
        known = {f.name for f in fields(cls)}
        values: Dict[str, Any] = {}
        extra: Dict[str, int] = dict(data.get("extra", {}) or {})
        for name, value in data.items():
            if name == "installed_domains":
                values[name] = tuple(value)
            elif name == "size_classes":
                values[name] = tuple(SizeClassStats(**{k: int(c.get(k, 0)) for k in CLASS_FIELDS})
                                     for c in value)
            elif name == "extra":
                continue
            elif name in known:
                values[name] = int(value)
            else:
                extra[name] = int(value)
        return cls(extra=extra, **values)

    def to_dict(self) -> Dict[str, Any]:
        """``{field: value}`` in field order: ints, ``installed_domains`` as
        a list of str, ``size_classes`` as a list of dicts; the ``extra`` fields (normally none) are flattened
        into the dict. ``json.dumps`` accepts it as it is."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "installed_domains":
                value = list(value)
            elif f.name == "size_classes":
                value = [c.to_dict() for c in value]
            out[f.name] = value
        for name, value in self.extra.items():
            out.setdefault(name, value)
        return out

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        """Every field, in order (``extra`` included)."""
        return tuple(f.name for f in fields(cls))


_CORE_SET = frozenset(CORE_FIELDS)


def read_pss() -> int:
    """PSS of this process in bytes from /proc/self/smaps_rollup, or 0."""
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
