"""The UC9 distribution grid: a pandapower network with 13 domestic and 13 industrial loads plus PV.

The seed's UC9 grid (IoT-NGIN D3.4, section 2.2.3) has 13 domestic and 13 industrial client groups, named
``Load_D_<bus>`` and ``Load_I_<bus>`` (a domestic and an industrial group share a bus), with PV
generation. Its topology is not public, so we build a 20 kV grid of the same shape with pandapower and
attach real SimBench profiles:

* 110 kV external grid (slack, 1.0 p.u.) -> 40 MVA 110/20 kV transformer -> 20 kV busbar;
* two radial cable feeders (NA2XS2Y 1x240 RM/25 12/20 kV): buses 1-7 and buses 8-13;
* at every feeder bus one domestic load (SimBench household profiles ``H0-*``) and one industrial load
  (13 distinct SimBench commercial/industrial profiles ``G*``), reactive power from the profile's
  ``qload`` column times ``p_mw * tan_phi``;
* eight PV plants with the SimBench PV profiles ``PV1``..``PV8`` at unity power factor.

Rated powers are design parameters of this grid (documented in docs/grid.md); which loads carry most
demand is *derived* from them and the profiles (see :func:`simulator.grid.model.demand_shares`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from simulator.grid.errors import MissingExtraError

LoadKind = Literal["domestic", "industrial"]


@dataclass(frozen=True)
class LoadSpec:
    """One client group: a load at a feeder bus driven by a SimBench load profile."""

    kind: LoadKind
    bus: int
    profile: str
    p_mw: float

    @property
    def name(self) -> str:
        return f"Load_{'D' if self.kind == 'domestic' else 'I'}_{self.bus}"


@dataclass(frozen=True)
class PVSpec:
    """One PV plant at a feeder bus driven by a SimBench PV profile (relative to ``p_mw``)."""

    bus: int
    profile: str
    p_mw: float

    @property
    def name(self) -> str:
        return f"PV_{self.bus}"


@dataclass(frozen=True)
class GridSpec:
    """Everything needed to build the network and to attach its profiles."""

    name: str
    loads: tuple[LoadSpec, ...]
    pv: tuple[PVSpec, ...]
    feeders: tuple[tuple[int, ...], ...]
    cable_km: dict[int, float] = field(hash=False)
    cos_phi: float = 0.93
    hv_kv: float = 110.0
    mv_kv: float = 20.0
    ext_grid_vm_pu: float = 1.0
    trafo_type: str = "40 MVA 110/20 kV"
    cable_type: str = "NA2XS2Y 1x240 RM/25 12/20 kV"

    @property
    def tan_phi(self) -> float:
        return math.tan(math.acos(self.cos_phi))

    @property
    def buses(self) -> tuple[int, ...]:
        return tuple(b for feeder in self.feeders for b in feeder)

    def scaled(self, load_factor: float = 1.0, pv_factor: float = 1.0, name: str | None = None) -> GridSpec:
        """A copy with every load (PV plant) rated power multiplied by ``load_factor`` (``pv_factor``)."""
        return GridSpec(
            name=name or f"{self.name} x{load_factor:g} load x{pv_factor:g} pv",
            loads=tuple(LoadSpec(ld.kind, ld.bus, ld.profile, ld.p_mw * load_factor) for ld in self.loads),
            pv=tuple(PVSpec(p.bus, p.profile, p.p_mw * pv_factor) for p in self.pv),
            feeders=self.feeders,
            cable_km=dict(self.cable_km),
            cos_phi=self.cos_phi,
            hv_kv=self.hv_kv,
            mv_kv=self.mv_kv,
            ext_grid_vm_pu=self.ext_grid_vm_pu,
            trafo_type=self.trafo_type,
            cable_type=self.cable_type,
        )


_DOMESTIC: tuple[tuple[int, str, float], ...] = (
    (1, "H0-A", 0.40),
    (2, "H0-B", 0.35),
    (3, "H0-C", 0.30),
    (4, "H0-A", 3.00),
    (5, "H0-G", 0.25),
    (6, "H0-L", 0.30),
    (7, "H0-B", 2.20),
    (8, "H0-C", 0.45),
    (9, "H0-A", 1.30),
    (10, "H0-G", 0.30),
    (11, "H0-L", 0.35),
    (12, "H0-B", 0.25),
    (13, "H0-C", 0.20),
)
_INDUSTRIAL: tuple[tuple[int, str, float], ...] = (
    (1, "G1-A", 0.30),
    (2, "G4-A", 0.20),
    (3, "G3-M", 1.10),
    (4, "G0-A", 0.25),
    (5, "G1-C", 0.60),
    (6, "G2-A", 0.15),
    (7, "G0-M", 1.10),
    (8, "G4-B", 0.20),
    (9, "G1-B", 1.30),
    (10, "G5-A", 0.15),
    (11, "G4-M", 0.90),
    (12, "G6-A", 0.15),
    (13, "G3-A", 0.20),
)
_PV: tuple[tuple[int, str, float], ...] = (
    (2, "PV1", 4.0),
    (3, "PV2", 3.0),
    (5, "PV3", 4.0),
    (7, "PV4", 3.0),
    (9, "PV5", 4.0),
    (10, "PV6", 3.0),
    (12, "PV7", 4.0),
    (13, "PV8", 3.0),
)

UC9_GRID = GridSpec(
    name="uc9-mv-20kV",
    loads=tuple(LoadSpec("domestic", b, p, s) for b, p, s in _DOMESTIC)
    + tuple(LoadSpec("industrial", b, p, s) for b, p, s in _INDUSTRIAL),
    pv=tuple(PVSpec(b, p, s) for b, p, s in _PV),
    feeders=((1, 2, 3, 4, 5, 6, 7), (8, 9, 10, 11, 12, 13)),
    cable_km={
        1: 1.8,
        2: 1.2,
        3: 0.9,
        4: 1.5,
        5: 1.1,
        6: 0.7,
        7: 1.3,
        8: 2.1,
        9: 1.0,
        10: 1.4,
        11: 0.8,
        12: 1.2,
        13: 0.9,
    },
)
"""The grid every command uses unless told otherwise."""


def _pandapower() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pandapower
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingExtraError("pandapower") from exc
    return pandapower


def build_network(spec: GridSpec = UC9_GRID) -> Any:
    """A pandapower network for ``spec`` with every load and PV plant at its rated power.

    Element order follows ``spec.loads`` and ``spec.pv``: ``net.load`` row *i* is ``spec.loads[i]``.
    """
    pp = _pandapower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = pp.create_empty_network(name=spec.name)
        hv = pp.create_bus(net, vn_kv=spec.hv_kv, name="HV")
        busbar = pp.create_bus(net, vn_kv=spec.mv_kv, name="MV busbar")
        pp.create_ext_grid(net, hv, vm_pu=spec.ext_grid_vm_pu, name="External grid")
        pp.create_transformer(net, hv, busbar, std_type=spec.trafo_type, name="HV/MV transformer")
        bus_index: dict[int, int] = {}
        for feeder in spec.feeders:
            upstream = busbar
            for number in feeder:
                idx = pp.create_bus(net, vn_kv=spec.mv_kv, name=f"Bus {number}")
                bus_index[number] = idx
                pp.create_line(
                    net,
                    upstream,
                    idx,
                    length_km=spec.cable_km[number],
                    std_type=spec.cable_type,
                    name=f"Cable to bus {number}",
                )
                upstream = idx
        for load in spec.loads:
            pp.create_load(
                net,
                bus_index[load.bus],
                p_mw=load.p_mw,
                q_mvar=load.p_mw * spec.tan_phi,
                name=load.name,
            )
        for plant in spec.pv:
            pp.create_sgen(net, bus_index[plant.bus], p_mw=plant.p_mw, q_mvar=0.0, name=plant.name, type="PV")
    return net
