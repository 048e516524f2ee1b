"""Numba kernel of :class:`simulator.grid.powerflow.NewtonSolver` (compiled on first use, cached on disk).

Polar Newton-Raphson, one slot at a time: a slot's result depends only on its own injections.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

DIVERGED = -1
NOT_CONVERGED = -2


@njit(cache=True, nogil=True)
def newton_batch(
    y: Any,
    v0: Any,
    ref: int,
    pq: Any,
    sbus: Any,
    tol: float,
    max_iteration: int,
    p_ext: Any,
    vm_min: Any,
    vm_max: Any,
    status: Any,
) -> None:  # pragma: no cover - compiled
    n = y.shape[0]
    m = pq.shape[0]
    n_slots = sbus.shape[0]
    for b in range(n_slots):
        vm = np.abs(v0).copy()
        va = np.angle(v0).copy()
        v = v0.copy()
        status[b] = NOT_CONVERGED
        for it in range(max_iteration + 1):
            current = np.zeros(n, dtype=np.complex128)
            for i in range(n):
                acc = 0j
                for k in range(n):
                    acc += y[i, k] * v[k]
                current[i] = acc
            f = np.empty(2 * m)
            norm = 0.0
            for a in range(m):
                i = pq[a]
                mis = v[i] * np.conj(current[i]) - sbus[b, i]
                f[a] = mis.real
                f[m + a] = mis.imag
                norm = max(norm, abs(mis.real), abs(mis.imag))
            if not np.isfinite(norm):
                status[b] = DIVERGED
                break
            if norm < tol:
                status[b] = it
                break
            if it == max_iteration:
                break
            jac = np.empty((2 * m, 2 * m))
            for a in range(m):
                i = pq[a]
                for c in range(m):
                    k = pq[c]
                    vk_norm = v[k] / vm[k]
                    dva = -1j * v[i] * np.conj(y[i, k] * v[k])
                    dvm = v[i] * np.conj(y[i, k] * vk_norm)
                    if i == k:
                        dva += 1j * v[i] * np.conj(current[i])
                        dvm += np.conj(current[i]) * vk_norm
                    jac[a, c] = dva.real
                    jac[a, m + c] = dvm.real
                    jac[m + a, c] = dva.imag
                    jac[m + a, m + c] = dvm.imag
            dx = np.linalg.solve(jac, -f)
            for a in range(m):
                i = pq[a]
                va[i] += dx[a]
                vm[i] += dx[m + a]
                v[i] = vm[i] * np.exp(1j * va[i])
        acc = 0j
        for k in range(n):
            acc += y[ref, k] * v[k]
        p_ext[b] = (v[ref] * np.conj(acc)).real
        vm_min[b] = np.min(np.abs(v))
        vm_max[b] = np.max(np.abs(v))
