"""GPTQ (Frantar et al. 2022) producing the same groups / scales / packed layout as RTN (intn.py).

    H = 2 X^T X / T   (X [T, K] calibration inputs of the layer; the 1/T does not change the result)
    dead columns (H_kk == 0): H_kk = 1, W[:, k] = 0
    act_order: process columns by decreasing H_kk
    H += percdamp * mean(diag H) * I;   U = cholesky(H^-1) upper triangular
    for each block of `blocksize` columns, for each column i in it:
        a column whose group (groups are contiguous in the ORIGINAL column order, G wide) has no
        scale yet sets it now from the current (already error-corrected) weights of that group
        q_i = quantize(w_i);  e = (w_i - deq(q_i)) / U_ii;  W[:, i:block_end] -= e U[i, i:block_end]
    then the rest of the matrix gets the block's errors at once: W[:, end:] -= E U[block, end:].
"""

from __future__ import annotations

import numpy as np

from .intn import (IntNWeight, check_scheme, group_params, num_groups, pack_intn, quantize_group)


def hessian(x: np.ndarray) -> np.ndarray:
    """x [T, K] calibration activations -> H [K, K] float64 = 2 X^T X / T."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    return 2.0 * (x.T @ x) / max(1, x.shape[0])


def gptq_quantize(w: np.ndarray, h: np.ndarray, bits: int, group_size: int = 128,
                  percdamp: float = 0.01, act_order: bool = False,
                  blocksize: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w [N, K] float, h [K, K] Hessian -> (q [N, K] uint8, scales, zeros [N, ngroups] fp16), as quantize_rtn."""
    check_scheme(bits, group_size)
    W = np.array(w, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {W.shape}")
    N, K = W.shape
    H = np.array(h, dtype=np.float64)
    if H.shape != (K, K):
        raise ValueError(f"Hessian must be [{K}, {K}], got {H.shape}")
    G, ng = group_size, num_groups(K, group_size)

    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    inv = np.argsort(perm)
    W, H = W[:, perm], H[np.ix_(perm, perm)]
    H[np.diag_indices(K)] += percdamp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T            # upper: H^-1 = U^T U

    q = np.zeros((N, K), dtype=np.uint8)                 # in processing order
    scales = np.zeros((N, ng), dtype=np.float32)
    zeros = np.zeros((N, ng), dtype=np.float32)
    have = np.zeros(ng, dtype=bool)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        E = np.zeros((N, i2 - i1))
        for i in range(i1, i2):
            g = perm[i] // G
            if not have[g]:
                cols = inv[g * G:min(K, (g + 1) * G)]    # the group's columns, processing order
                s, z = group_params(W[:, cols].astype(np.float32), bits)
                scales[:, g], zeros[:, g], have[g] = s, z, True
            wi = W[:, i]
            qi = quantize_group(wi[:, None].astype(np.float32), scales[:, g], zeros[:, g], bits)[:, 0]
            q[:, i] = qi
            deq = scales[:, g].astype(np.float64) * (qi.astype(np.float64) - zeros[:, g])
            e = (wi - deq) / U[i, i]
            W[:, i:i2] -= np.outer(e, U[i, i:i2])
            E[:, i - i1] = e
        W[:, i2:] -= E @ U[i1:i2, i2:]
    return q[:, inv], scales.astype(np.float16), zeros.astype(np.float16)


def gptq_quantize_intn(w: np.ndarray, x: np.ndarray, bits: int, group_size: int = 128,
                       percdamp: float = 0.01, act_order: bool = False) -> IntNWeight:
    """GPTQ-quantize w [N, K] with calibration inputs x [T, K] and pack it like quantize_intn."""
    q, s, z = gptq_quantize(w, hessian(x), bits, group_size, percdamp, act_order)
    N, K = q.shape
    return IntNWeight(pack_intn(q, bits, group_size), s, z, bits, group_size, N, K)
