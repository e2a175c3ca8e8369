"""Routing keys: one zone of the 32-bit key space per outgoing partition.

Keys follow PACMAN's zoned layout, with field widths shared by the whole network so that the
entries of one partition merge into a single table entry::

    31                                                             0
    +-----------------+-----------------+----------------+----------+
    |   A|P partition  |   M core index  |  X neuron      |  colour  |
    +-----------------+-----------------+----------------+----------+
    <-- partition mask covers A|P ----->
    <-- core mask covers A|P and M ---------------------->

Neuron ``i`` of core ``m`` of partition ``a`` sends ``key(a, m) | i << colour_bits | c``,
where the colour ``c`` is the tick number modulo ``2 ** colour_bits``. A delay extension is
its own partition; it sends stage ``d`` (0-based) of neuron ``i`` as atom ``d * stride + i``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from toolchain.errors import KeySpaceError
from toolchain.splitting import MappingConfig, Vertex, VertexKind, ceil_log2

__all__ = ["KeySpace", "Partition", "allocate_keys"]

_WORD = 0xFFFF_FFFF


@dataclass(frozen=True)
class Partition:
    """An outgoing partition: the spikes of a population, or of its delay extension."""

    population_index: int
    is_delay: bool


@dataclass(frozen=True)
class KeySpace:
    """The key layout of a network.

    Attributes:
        n_colour_bits: colour field width.
        n_atom_bits: neuron (atom) field width.
        n_core_bits: core index field width.
        n_partition_bits: partition field width.
        partition_index: partition -> A|P value.
    """

    n_colour_bits: int
    n_atom_bits: int
    n_core_bits: int
    n_partition_bits: int
    partition_index: Mapping[Partition, int]

    @property
    def core_shift(self) -> int:
        """Bit position of the M field."""
        return self.n_atom_bits + self.n_colour_bits

    @property
    def partition_shift(self) -> int:
        """Bit position of the A|P field."""
        return self.core_shift + self.n_core_bits

    @property
    def core_mask(self) -> int:
        """Mask of a core's keys (covers A|P and M)."""
        return (_WORD << self.core_shift) & _WORD

    @property
    def partition_mask(self) -> int:
        """Mask of a partition's keys (covers A|P)."""
        return (_WORD << self.partition_shift) & _WORD

    def partition_key(self, partition: Partition) -> int:
        """Base key of a partition."""
        return self.partition_index[partition] << self.partition_shift

    def core_key(self, vertex: Vertex) -> int:
        """Base key of a vertex's core (atom and colour bits zero)."""
        return self.partition_key(partition_of(vertex)) | (vertex.slice_index << self.core_shift)

    def neuron_keys(self, vertex: Vertex) -> list[int]:
        """Key of each neuron of a core (colour bits zero)."""
        base = self.core_key(vertex)
        return [base | (i << self.n_colour_bits) for i in range(vertex.n_atoms)]


def partition_of(vertex: Vertex) -> Partition:
    """The outgoing partition a vertex sends in."""
    return Partition(vertex.population.index, vertex.kind is VertexKind.DELAY)


def allocate_keys(
    vertices: Sequence[Vertex], config: MappingConfig, n_stages: Mapping[int, int]
) -> KeySpace:
    """Lay out the key space of all vertices that send.

    Args:
        vertices: every vertex of the network.
        config: mapping knobs (colour bits).
        n_stages: delay stages per source population index.

    Raises:
        KeySpaceError: the fields need more than 32 bits.
    """
    partitions: dict[Partition, int] = {}
    max_atoms = 1
    max_cores = 1
    for vertex in vertices:
        part = partition_of(vertex)
        partitions.setdefault(part, len(partitions))
        atoms = vertex.stride * (n_stages.get(part.population_index, 0) if part.is_delay else 1)
        max_atoms = max(max_atoms, atoms)
        max_cores = max(max_cores, vertex.slice_index + 1)
    space = KeySpace(
        config.n_colour_bits,
        ceil_log2(max_atoms),
        ceil_log2(max_cores),
        ceil_log2(len(partitions)),
        partitions,
    )
    total = space.partition_shift + space.n_partition_bits
    if total > 32:
        raise KeySpaceError(
            f"keys need {total} bits ({space.n_partition_bits} partition, {space.n_core_bits} "
            f"core, {space.n_atom_bits} neuron, {space.n_colour_bits} colour) but have 32"
        )
    return space
