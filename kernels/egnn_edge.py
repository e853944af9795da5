"""Fused Triton kernel of the EGNN layer's edge half (egno_fast/ops/egnn_edge.py) on the receiver-sorted CSR, all P
frames of an edge at once, registered as PyTorch operators: ``torch.ops.egno_fast.triton_egnn_edge_forward``
(fake kernel and autograd registered with torch.library) and ``..._backward``.

The layer (egno_fast/ops/egnn.py) is split into node-level work, left to PyTorch ([N, P, H] tensors: the two
halves of the first edge layer applied once per node, the velocity and node MLPs) and the edge-level work, fused
here into one kernel::

    z1 = A_i + B_j + |r|^2 w_d + e_ij W_e^T     A = h W_a^T + b1, B = h W_b^T  (node projections, docs/design.md §4.3)
    m  = silu(silu(z1) W_2^T + b_2)            r = x_i - x_j (+ s_ij, the edge's periodic shift, if given)
    phi = silu(m W_c1^T + b_c1) . w_c2 + b_c2
    msg_sum_i = sum_j m,   coord_sum_i = sum_j c,   c = r * phi  (each component clamped to +-edge_clamp if given)

A program owns receivers (persistent: receivers pid, pid + G, ...), walks each one's incoming edges in chunks of
BLOCK_E edges x BLOCK_P frames (one row per edge and frame; P > 8 in tiles of 8), and reduces the messages in
registers: each node's sums are written once. Nothing of size E x H is allocated, forward or backward. The [H, H]
weights enter BLOCK_K rows or columns at a time, so registers never hold a whole weight.

Backward recomputes the edge activations. The receiver pass gives the receiver-side node gradients, the sender pass
walks the transposed CSR and gives the sender-side node gradients and the edge-feature gradients (each edge belongs
to one program); the weight gradients are shared between the two as per-program partial sums (reduced in a fixed
order afterwards). Both are deterministic. The opt-in atomic mode skips the sender pass: the receiver pass does
everything and scatters the sender-side gradients with atomics.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from egno_fast.graph import check_kernel_csr
from egno_fast.ops.egnn_edge import (GRAPH_INPUTS, TRITON_MAX_FRAMES, TRITON_MAX_HIDDEN, EGNNEdgeWeights,
                                     check_edge_shapes)

MODE_FORWARD = 0  # msg_sum, coord_sum of the receivers
MODE_RECEIVER_GRAD = 1  # receiver-side node gradients, weight partial sums (with ATOMIC: everything)
MODE_SENDER_GRAD = 2  # sender-side node gradients, edge-feature gradients, weight partial sums (transposed CSR)
BLOCK_F = 16  # edge features are processed in chunks of 16 columns (any width, zero included)
_BLOCK_F = tl.constexpr(BLOCK_F)  # the same, readable inside kernels


@triton.jit
def _first_layer_chunk(a_ptr, b_ptr, ea_ptr, wd_ptr, we_ptr, node_i, node_j, edge, d2, row_ok, k0, H, F,
                       BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       ACC: tl.constexpr):
    """Columns k0 .. k0 + BLOCK_K of z1 = A_i + B_j + |r|^2 w_d + e_ij W_e^T for the rows ([M] node_i, node_j,
    edge, d2, row_ok): [M, BLOCK_K], zero in padded columns."""
    kk = k0 + tl.arange(0, BLOCK_K)
    k_ok = kk < H
    mask = row_ok[:, None] & k_ok[None, :]
    wd = tl.load(wd_ptr + kk, mask=k_ok, other=0.0).to(ACC)
    z1 = tl.load(a_ptr + node_i[:, None] * H + kk[None, :], mask=mask, other=0.0).to(ACC) + \
        tl.load(b_ptr + node_j[:, None] * H + kk[None, :], mask=mask, other=0.0).to(ACC) + d2[:, None] * wd[None, :]
    fcols = tl.arange(0, _BLOCK_F)
    for f0 in range(0, F, _BLOCK_F):
        f_ok = (f0 + fcols) < F
        ea = tl.load(ea_ptr + edge.to(tl.int64)[:, None] * F + f0 + fcols[None, :],
                     mask=row_ok[:, None] & f_ok[None, :], other=0.0).to(DOT_DTYPE)  # [M, BF]
        we_t = tl.load(we_ptr + kk[None, :] * F + f0 + fcols[:, None],
                       mask=f_ok[:, None] & k_ok[None, :], other=0.0).to(DOT_DTYPE)  # [BF, BK]
        z1 += tl.dot(ea, we_t, input_precision=DOT_PRECISION).to(ACC)
    return z1


@triton.jit
def _accumulate(ptr, value):
    """ptr += value, for a program's own partial sums. The barrier orders the program's earlier stores (of another
    slice, chunk or frame tile) before this load: the compiler may give the load and the store different layouts,
    so the thread that loads an element need not be the one that stored it last time."""
    tl.debug_barrier()
    tl.store(ptr, tl.load(ptr) + value)


@triton.jit
def _coordinate_slice(m, n0, wc1_ptr, bc1_ptr, wc2_ptr, cols, col_ok, kcols, H, DOT_DTYPE: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, ACC: tl.constexpr):
    """Output columns n0 .. n0 + BLOCK_K of the coordinate MLP's hidden layer for the rows m [M, BLOCK_H]:
    (nn, n_ok [BLOCK_K] the columns, wc1_t [BLOCK_H, BLOCK_K] their weights, z3 = m Wc1^T + bc1 and s3 =
    sigmoid(z3) [M, BLOCK_K], wc2 [BLOCK_K] their output weights); phi adds sum(z3 * s3 * wc2) over the slices."""
    nn = n0 + kcols
    n_ok = nn < H
    wc1_t = tl.load(wc1_ptr + nn[None, :] * H + cols[:, None],
                    mask=col_ok[:, None] & n_ok[None, :], other=0.0).to(DOT_DTYPE)  # [BH, BK]
    z3 = tl.dot(m.to(DOT_DTYPE), wc1_t, input_precision=DOT_PRECISION).to(ACC) + \
        tl.load(bc1_ptr + nn, mask=n_ok, other=0.0).to(ACC)[None, :]
    s3 = 1.0 / (1.0 + tl.exp(-z3))
    wc2 = tl.load(wc2_ptr + nn, mask=n_ok, other=0.0).to(ACC)
    return nn, n_ok, wc1_t, z3, s3, wc2


@triton.jit
def _coordinate_weight(m, wc1_ptr, bc1_ptr, wc2_ptr, bc2, cols, col_ok, kcols, H, BLOCK_M: tl.constexpr,
                       BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       ACC: tl.constexpr):
    """phi = silu(m Wc1^T + bc1) . wc2 + bc2 of the rows m [M, BLOCK_H], slice by slice as the kernel's fused loop
    computes it (the same operations in the same order)."""
    phi = tl.zeros((BLOCK_M,), dtype=ACC)
    for n0 in range(0, H, BLOCK_K):
        _nn, _n_ok, _wc1_t, z3, s3, wc2 = _coordinate_slice(m, n0, wc1_ptr, bc1_ptr, wc2_ptr, cols, col_ok, kcols, H,
                                                            DOT_DTYPE, DOT_PRECISION, ACC)
        phi += tl.sum(z3 * s3 * wc2[None, :], axis=1)
    return phi + bc2


@triton.jit
def _clamp(c, bound):
    """c clamped to [-bound, bound]."""
    return tl.minimum(tl.maximum(c, -bound), bound)


@triton.jit
def _clamp_grad(g, c, bound):
    """The gradient g of c's clamp (_clamp): g where -bound <= c <= bound (torch.clamp's), else 0."""
    return tl.where((c >= -bound) & (c <= bound), g, 0.0)


@triton.jit
def _silu_grad(z, s):
    """d silu(z) / dz from z and s = sigmoid(z)."""
    return s * (1.0 + z * (1.0 - s))


# Sizes and counts are not specialised (divisibility by 16, value 1): one compiled variant per table entry, as
# compiled ahead of time by the tests (F % 16 == 0 once hit a Triton 3.6 layout-verifier failure on sm_90).
@triton.jit(do_not_specialize=["N", "F", "num_programs"])
def egnn_edge_kernel(
    a_ptr, b_ptr, x_ptr, ea_ptr, shift_ptr, wd_ptr, we_ptr, w2_ptr, b2_ptr, wc1_ptr, bc1_ptr, wc2_ptr, bc2_ptr,
    rowptr_ptr, other_ptr, perm_ptr,
    gm_ptr, gc_ptr,
    node_out_ptr, coord_out_ptr, scatter_node_ptr, scatter_coord_ptr, g_ea_ptr,
    part_mat_ptr, part_we_ptr, part_vec_ptr,
    N, P, H, F, num_programs, clamp_ptr,
    BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, MODE: tl.constexpr, ATOMIC: tl.constexpr, CLAMP_EDGES: tl.constexpr,
    SHIFT: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Node tensors are contiguous [N, P, H] (a, b, gm, node_out, scatter_node) or [N, P, 3] (x, gc, coord_out,
    scatter_coord); ea and g_ea [E, F] in receiver-sorted edge order; weights as nn.Linear stores them
    (w2, wc1 [H, H] out x in, we [H, F]); wd, b2, bc1, wc2 [H]; bc2 [1].
    CSR of the owners: rowptr [N + 1]; other [E] the opposite endpoint of each sorted edge (sender in the
    receiver-side modes, receiver in the sender mode); perm [E] (sender mode) the sorted edge of each position.
    Outputs: forward: node_out = msg_sum, coord_out = coord_sum. MODE_RECEIVER_GRAD: node_out = dL/dA,
    coord_out = receiver part of dL/dx; with ATOMIC also scatter_node = dL/dB and scatter_coord = sender part of
    dL/dx by atomics. MODE_SENDER_GRAD: node_out = dL/dB, coord_out = sender part of dL/dx. The backward passes
    also give their share of the weight gradients (below) as per-program partial sums added to zeroed buffers:
    part_mat [G, NUM_MATS, BH, BH] (W2 if W2_GRADS, then Wc1 if WC1_GRADS), part_we [G, BH, F_pad] (EDGE_GRADS)
    and part_vec [G, 5, BH] (b2, bc1, wc2, wd, bc2 in column 0), and with EDGE_GRADS g_ea.
    CLAMP_EDGES: each component of every coordinate message r * phi is clamped to +-edge_clamp; the backward then
    computes phi once more before its fused loop, for the clamp's gradient mask; the bound is clamp_ptr[0] (in the
    accumulation dtype: an fp64 bound stays exact). SHIFT: shift [E, 3] (sorted edge
    order, x's dtype) is added to r = x_i - x_j of each edge.

    Registers hold [rows, BLOCK_H] activations and [BLOCK_K, BLOCK_H] slices of the [H, H] weights, never a whole
    weight: the first layer is computed BLOCK_K columns at a time and fed to the second layer's dot as its K
    slice; the coordinate MLP's hidden layer is computed BLOCK_K output columns at a time."""
    pid = tl.program_id(0)
    BLOCK_RE: tl.constexpr = BLOCK_R * BLOCK_E  # edge slots per chunk
    BLOCK_M: tl.constexpr = BLOCK_RE * BLOCK_P  # rows per chunk: (owner, edge slot, frame)
    NUM_K: tl.constexpr = BLOCK_H // BLOCK_K  # column slices
    rows = tl.arange(0, BLOCK_M)
    row_owner = rows // (BLOCK_E * BLOCK_P)
    row_slot = (rows // BLOCK_P) % BLOCK_E
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    kcols = tl.arange(0, BLOCK_K)
    slices = tl.arange(0, NUM_K)
    fcols = tl.arange(0, _BLOCK_F)
    slots = tl.arange(0, BLOCK_RE)
    slot_owner = slots // BLOCK_E
    local_owner = tl.arange(0, BLOCK_R)
    tile_frames = tl.arange(0, BLOCK_P)
    bc2 = tl.load(bc2_ptr).to(ACC)
    if CLAMP_EDGES:
        edge_clamp = tl.load(clamp_ptr).to(ACC)
    b2 = tl.load(b2_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    # the weight gradients are shared between the two deterministic backward passes (each visits every edge once),
    # which balances their registers: the receiver pass takes the coordinate MLP's (Wc1, bc1, wc2), the sender pass
    # the rest (W2, wd, W_e, b2, bc2) and the edge-feature gradients. Without a sender pass (ATOMIC) the receiver
    # pass takes all.
    RECEIVER_ALL: tl.constexpr = (MODE == 1) and ATOMIC
    W2_GRADS: tl.constexpr = (MODE == 2) or RECEIVER_ALL
    WC1_GRADS: tl.constexpr = (MODE == 1)
    EDGE_GRADS: tl.constexpr = (MODE == 2) or RECEIVER_ALL
    BIAS_GRADS: tl.constexpr = (MODE == 2) or RECEIVER_ALL
    if MODE != 0:
        part_b2 = part_vec_ptr + pid.to(tl.int64) * 5 * BLOCK_H  # then bc1, wc2, wd, bc2
        NUM_MATS: tl.constexpr = W2_GRADS + WC1_GRADS  # [H, H] partials per program: W2, then Wc1
        part_w2 = part_mat_ptr + pid.to(tl.int64) * NUM_MATS * BLOCK_H * BLOCK_H
        part_wc1 = part_w2 + W2_GRADS * BLOCK_H * BLOCK_H
        f_pad = tl.cdiv(F, _BLOCK_F) * _BLOCK_F

    for first_owner in range(pid * BLOCK_R, N, num_programs * BLOCK_R):
        owners = first_owner + local_owner  # [BLOCK_R]
        owner_ok = owners < N
        starts = tl.load(rowptr_ptr + owners, mask=owner_ok, other=0)
        ends = tl.load(rowptr_ptr + owners + 1, mask=owner_ok, other=0)
        # per row and per edge slot: the owner's CSR range (a gather from the [BLOCK_R] vectors)
        row_start = tl.load(rowptr_ptr + first_owner + row_owner, mask=first_owner + row_owner < N, other=0)
        row_end = tl.load(rowptr_ptr + first_owner + row_owner + 1, mask=first_owner + row_owner < N, other=0)
        slot_start = tl.load(rowptr_ptr + first_owner + slot_owner, mask=first_owner + slot_owner < N, other=0)
        slot_end = tl.load(rowptr_ptr + first_owner + slot_owner + 1, mask=first_owner + slot_owner < N, other=0)
        row_node = first_owner + row_owner
        max_degree = tl.max(ends - starts, axis=0)
        for p0 in range(0, P, BLOCK_P):  # frame tiles of the owners (all in this program: g_ea sums over frames)
            frame = p0 + rows % BLOCK_P
            frame_ok = frame < P
            acc_node = tl.zeros((BLOCK_R, BLOCK_P, NUM_K, BLOCK_K), dtype=ACC)
            acc_c0 = tl.zeros((BLOCK_R, BLOCK_P), dtype=ACC)
            acc_c1 = tl.zeros((BLOCK_R, BLOCK_P), dtype=ACC)
            acc_c2 = tl.zeros((BLOCK_R, BLOCK_P), dtype=ACC)
            for chunk in range(0, max_degree, BLOCK_E):
                pos = row_start + chunk + row_slot
                row_ok = (pos < row_end) & frame_ok
                if MODE == 2:
                    edge = tl.load(perm_ptr + pos, mask=row_ok, other=0)
                    recv = tl.load(other_ptr + edge, mask=row_ok, other=0)
                    send = row_node
                else:
                    edge = pos
                    send = tl.load(other_ptr + edge, mask=row_ok, other=0)
                    recv = row_node
                node_i = recv.to(tl.int64) * P + frame
                node_j = send.to(tl.int64) * P + frame
                hmask = row_ok[:, None] & col_ok[None, :]
                # ---- forward recomputation of the edge rows ----
                r0 = tl.load(x_ptr + node_i * 3, mask=row_ok, other=0.0).to(ACC) - \
                    tl.load(x_ptr + node_j * 3, mask=row_ok, other=0.0).to(ACC)
                r1 = tl.load(x_ptr + node_i * 3 + 1, mask=row_ok, other=0.0).to(ACC) - \
                    tl.load(x_ptr + node_j * 3 + 1, mask=row_ok, other=0.0).to(ACC)
                r2 = tl.load(x_ptr + node_i * 3 + 2, mask=row_ok, other=0.0).to(ACC) - \
                    tl.load(x_ptr + node_j * 3 + 2, mask=row_ok, other=0.0).to(ACC)
                if SHIFT:
                    shift_row = shift_ptr + edge.to(tl.int64) * 3
                    r0 += tl.load(shift_row, mask=row_ok, other=0.0).to(ACC)
                    r1 += tl.load(shift_row + 1, mask=row_ok, other=0.0).to(ACC)
                    r2 += tl.load(shift_row + 2, mask=row_ok, other=0.0).to(ACC)
                d2 = r0 * r0 + r1 * r1 + r2 * r2
                z2 = tl.zeros((BLOCK_M, BLOCK_H), dtype=ACC)
                for k0 in range(0, H, BLOCK_K):  # z2 = silu(z1) W2^T, K slice by K slice
                    z1 = _first_layer_chunk(a_ptr, b_ptr, ea_ptr, wd_ptr, we_ptr, node_i, node_j, edge, d2, row_ok,
                                            k0, H, F, BLOCK_K, DOT_DTYPE, DOT_PRECISION, ACC)
                    k_ok = k0 + kcols < H
                    w2_t = tl.load(w2_ptr + cols[None, :] * H + k0 + kcols[:, None],
                                   mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(DOT_DTYPE)  # [BK, BH]
                    z2 += tl.dot((z1 / (1.0 + tl.exp(-z1))).to(DOT_DTYPE), w2_t,
                                 input_precision=DOT_PRECISION).to(ACC)
                z2 += b2[None, :]
                s2 = 1.0 / (1.0 + tl.exp(-z2))
                m = tl.where(hmask, z2 * s2, 0.0)
                if MODE != 0:
                    g0 = tl.load(gc_ptr + node_i * 3, mask=row_ok, other=0.0).to(ACC)
                    g1 = tl.load(gc_ptr + node_i * 3 + 1, mask=row_ok, other=0.0).to(ACC)
                    g2 = tl.load(gc_ptr + node_i * 3 + 2, mask=row_ok, other=0.0).to(ACC)
                    if CLAMP_EDGES:  # dL/dc through the clamp, which needs phi before the fused loop
                        phi_c = _coordinate_weight(m, wc1_ptr, bc1_ptr, wc2_ptr, bc2, cols, col_ok, kcols, H,
                                                   BLOCK_M, BLOCK_K, DOT_DTYPE, DOT_PRECISION, ACC)
                        g0 = _clamp_grad(g0, r0 * phi_c, edge_clamp)
                        g1 = _clamp_grad(g1, r1 * phi_c, edge_clamp)
                        g2 = _clamp_grad(g2, r2 * phi_c, edge_clamp)
                    g_phi = g0 * r0 + g1 * r1 + g2 * r2
                    # dL/dm = the incoming message gradient + the coordinate MLP's part (below); the incoming part
                    # is added before or after the coordinate MLP's slices, whichever needs fewer registers in the
                    # pass (the AOT table: either order spills in one of the two passes)
                    if MODE == 2:
                        g_m = tl.load(gm_ptr + node_i[:, None] * H + cols[None, :], mask=hmask, other=0.0).to(ACC)
                    else:
                        g_m = tl.zeros((BLOCK_M, BLOCK_H), dtype=ACC)
                phi = tl.zeros((BLOCK_M,), dtype=ACC)
                for n0 in range(0, H, BLOCK_K):  # phi = silu(m Wc1^T + bc1) . wc2, output slice by slice
                    nn, n_ok, wc1_t, z3, s3, wc2 = _coordinate_slice(m, n0, wc1_ptr, bc1_ptr, wc2_ptr, cols, col_ok,
                                                                     kcols, H, DOT_DTYPE, DOT_PRECISION, ACC)
                    phi += tl.sum(z3 * s3 * wc2[None, :], axis=1)
                    if MODE != 0:
                        g_z3 = g_phi[:, None] * wc2[None, :] * _silu_grad(z3, s3)
                        g_m += tl.dot(g_z3.to(DOT_DTYPE), tl.trans(wc1_t), input_precision=DOT_PRECISION).to(ACC)
                        if WC1_GRADS:
                            _accumulate(part_wc1 + nn[:, None] * BLOCK_H + cols[None, :], tl.dot(
                                tl.trans(g_z3).to(DOT_DTYPE), m.to(DOT_DTYPE), input_precision=DOT_PRECISION).to(ACC))
                            _accumulate(part_b2 + BLOCK_H + nn, tl.sum(g_z3, axis=0))
                            _accumulate(part_b2 + 2 * BLOCK_H + nn, tl.sum(g_phi[:, None] * (z3 * s3), axis=0))
                phi = tl.where(row_ok, phi + bc2, 0.0)

                if MODE == 0:
                    acc_node += tl.reshape(tl.sum(tl.reshape(m, (BLOCK_R, BLOCK_E, BLOCK_P, BLOCK_H)), axis=1),
                                           (BLOCK_R, BLOCK_P, NUM_K, BLOCK_K))
                    c0, c1, c2 = r0 * phi, r1 * phi, r2 * phi
                    if CLAMP_EDGES:
                        c0, c1, c2 = _clamp(c0, edge_clamp), _clamp(c1, edge_clamp), _clamp(c2, edge_clamp)
                    acc_c0 += tl.sum(tl.reshape(c0, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                    acc_c1 += tl.sum(tl.reshape(c1, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                    acc_c2 += tl.sum(tl.reshape(c2, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                else:
                    # ---- backward of the rows (gradients of msg_sum_i and coord_sum_i arrive at the receiver) ----
                    if MODE != 2:
                        g_m += tl.load(gm_ptr + node_i[:, None] * H + cols[None, :], mask=hmask, other=0.0).to(ACC)
                    g_z2 = tl.where(hmask, g_m * _silu_grad(z2, s2), 0.0)
                    if BIAS_GRADS:
                        _accumulate(part_b2 + cols, tl.sum(g_z2, axis=0))
                        _accumulate(part_b2 + 4 * BLOCK_H, tl.sum(g_phi, axis=0))
                    if EDGE_GRADS:
                        slot_pos = slot_start + chunk + slots % BLOCK_E
                        slot_ok = slot_pos < slot_end
                        if MODE == 2:
                            slot_edge = tl.load(perm_ptr + slot_pos, mask=slot_ok, other=0)
                        else:
                            slot_edge = slot_pos
                    g_d2 = tl.zeros((BLOCK_M,), dtype=ACC)
                    for k0 in range(0, H, BLOCK_K):  # g_z1 = (g_z2 W2) * silu'(z1), K slice by K slice
                        kk = k0 + kcols
                        k_ok = kk < H
                        z1 = _first_layer_chunk(a_ptr, b_ptr, ea_ptr, wd_ptr, we_ptr, node_i, node_j, edge, d2,
                                                row_ok, k0, H, F, BLOCK_K, DOT_DTYPE, DOT_PRECISION, ACC)
                        s1 = 1.0 / (1.0 + tl.exp(-z1))
                        w2_t = tl.load(w2_ptr + cols[None, :] * H + kk[:, None],
                                       mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(DOT_DTYPE)  # [BK, BH]
                        g_z1 = tl.dot(g_z2.to(DOT_DTYPE), tl.trans(w2_t), input_precision=DOT_PRECISION).to(ACC) * \
                            _silu_grad(z1, s1)
                        wd = tl.load(wd_ptr + kk, mask=k_ok, other=0.0).to(ACC)
                        g_d2 += 2.0 * tl.sum(g_z1 * wd[None, :], axis=1)
                        this_slice = slices[:, None] == k0 // BLOCK_K
                        acc_node += tl.where(this_slice[None, None, :, :], tl.sum(
                            tl.reshape(g_z1, (BLOCK_R, BLOCK_E, BLOCK_P, BLOCK_K)), axis=1)[:, :, None, :], 0.0)
                        # weight gradients of this program (fixed order: deterministic)
                        if W2_GRADS:
                            _accumulate(part_w2 + cols[:, None] * BLOCK_H + kk[None, :], tl.dot(
                                tl.trans(g_z2).to(DOT_DTYPE), (z1 * s1).to(DOT_DTYPE),
                                input_precision=DOT_PRECISION).to(ACC))
                            _accumulate(part_b2 + 3 * BLOCK_H + kk, tl.sum(g_z1 * d2[:, None], axis=0))
                        if EDGE_GRADS:
                            for f0 in range(0, F, _BLOCK_F):
                                f_ok = (f0 + fcols) < F
                                ea = tl.load(ea_ptr + edge.to(tl.int64)[:, None] * F + f0 + fcols[None, :],
                                             mask=row_ok[:, None] & f_ok[None, :], other=0.0).to(DOT_DTYPE)
                                we = tl.load(we_ptr + kk[:, None] * F + f0 + fcols[None, :],
                                             mask=k_ok[:, None] & f_ok[None, :], other=0.0).to(DOT_DTYPE)  # [BK, BF]
                                g_ea_rows = tl.dot(g_z1.to(DOT_DTYPE), we, input_precision=DOT_PRECISION).to(ACC)
                                g_ea = tl.sum(tl.reshape(g_ea_rows, (BLOCK_RE, BLOCK_P, _BLOCK_F)), axis=1)
                                # each edge's g_ea is this program's alone: summed over K slices and frame tiles
                                g_ea_out = g_ea_ptr + slot_edge.to(tl.int64)[:, None] * F + f0 + fcols[None, :]
                                g_ea_ok = slot_ok[:, None] & f_ok[None, :]
                                tl.debug_barrier()  # as in _accumulate
                                g_ea += tl.load(g_ea_out, mask=g_ea_ok & (slot_pos + k0 + p0 > slot_pos)[:, None],
                                               other=0.0).to(ACC)
                                tl.store(g_ea_out, g_ea.to(g_ea_ptr.dtype.element_ty), mask=g_ea_ok)
                                g_we = tl.dot(tl.trans(g_z1).to(DOT_DTYPE), ea, input_precision=DOT_PRECISION)
                                _accumulate(part_we_ptr + (pid.to(tl.int64) * BLOCK_H + kk[:, None]) * f_pad + f0 +
                                            fcols[None, :], g_we.to(ACC))
                        if ATOMIC:
                            tl.atomic_add(scatter_node_ptr + node_j[:, None] * H + kk[None, :], g_z1,
                                          mask=row_ok[:, None] & k_ok[None, :])
                    gr0 = g0 * phi + g_d2 * r0
                    gr1 = g1 * phi + g_d2 * r1
                    gr2 = g2 * phi + g_d2 * r2
                    if MODE == 1:
                        acc_c0 += tl.sum(tl.reshape(gr0, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                        acc_c1 += tl.sum(tl.reshape(gr1, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                        acc_c2 += tl.sum(tl.reshape(gr2, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                        if ATOMIC:
                            tl.atomic_add(scatter_coord_ptr + node_j * 3, -gr0, mask=row_ok)
                            tl.atomic_add(scatter_coord_ptr + node_j * 3 + 1, -gr1, mask=row_ok)
                            tl.atomic_add(scatter_coord_ptr + node_j * 3 + 2, -gr2, mask=row_ok)
                    else:
                        acc_c0 -= tl.sum(tl.reshape(gr0, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                        acc_c1 -= tl.sum(tl.reshape(gr1, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)
                        acc_c2 -= tl.sum(tl.reshape(gr2, (BLOCK_R, BLOCK_E, BLOCK_P)), axis=1)

            out_frames = p0 + tile_frames
            out_node = owners.to(tl.int64)[:, None] * P + out_frames[None, :]  # [BLOCK_R, BLOCK_P]
            out_ok = owner_ok[:, None] & (out_frames < P)[None, :]
            out_cols = slices[:, None] * BLOCK_K + kcols[None, :]  # [NUM_K, BLOCK_K]
            tl.store(node_out_ptr + out_node[:, :, None, None] * H + out_cols[None, None, :, :],
                     acc_node.to(node_out_ptr.dtype.element_ty),
                     mask=out_ok[:, :, None, None] & (out_cols < H)[None, None, :, :])
            tl.store(coord_out_ptr + out_node * 3, acc_c0.to(coord_out_ptr.dtype.element_ty), mask=out_ok)
            tl.store(coord_out_ptr + out_node * 3 + 1, acc_c1.to(coord_out_ptr.dtype.element_ty), mask=out_ok)
            tl.store(coord_out_ptr + out_node * 3 + 2, acc_c2.to(coord_out_ptr.dtype.element_ty), mask=out_ok)


# ---------------------------------------------------------------------------------------------------------------------
# Dispatcher: a finite table of block configurations
# ---------------------------------------------------------------------------------------------------------------------
BLOCK_P_VALUES = (4, 8)  # frame tiles: fewer frames are padded to 4, more are taken 8 at a time
BLOCK_H_VALUES = (32, 64, 128)  # fewer channels are padded to 32
SLICE_WIDTH = 16  # columns of a weight slice held in registers ([BLOCK_K, BLOCK_H])
TARGET_ROWS = 16  # rows (edges x frames) per chunk: the smallest tl.dot takes, and the fewest registers


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_config(num_frames: int, hidden: int, owners_per_step: int = 1) -> Dict[str, int]:
    """Block sizes for P = ``num_frames`` and H = ``hidden``: each step of a program takes BLOCK_R owners
    x BLOCK_E of their edges x BLOCK_P frames (a tile of at most 8) as rows, BLOCK_H >= H columns in slices of
    BLOCK_K. GPUs use one owner per step; the interpreter takes ``owners_per_step`` (fewer, larger steps run faster
    there)."""
    if not 1 <= num_frames <= TRITON_MAX_FRAMES:
        raise ValueError(f"the Triton EGNN layer supports 1 <= P <= {TRITON_MAX_FRAMES} frames, got P = {num_frames}")
    if not 1 <= hidden <= TRITON_MAX_HIDDEN:
        raise ValueError(f"the Triton EGNN layer supports hidden sizes 1 <= H <= {TRITON_MAX_HIDDEN}, got H = "
                         f"{hidden}")
    if owners_per_step < 1 or owners_per_step & (owners_per_step - 1):
        raise ValueError(f"owners_per_step must be a power of two, got {owners_per_step}")
    block_p = min(max(4, _next_pow2(num_frames)), BLOCK_P_VALUES[-1])
    block_h = max(32, _next_pow2(hidden))
    return dict(BLOCK_R=owners_per_step, BLOCK_E=max(1, TARGET_ROWS // block_p), BLOCK_P=block_p,
                BLOCK_H=block_h, BLOCK_K=min(SLICE_WIDTH, block_h))


def num_warps(mode: int, block_h: int) -> int:
    """Warps per program: 8 (fewer registers per thread) except the forward at BLOCK_H = 32, which fits 4 warps'
    registers without spilling (with 8, ptxas trades a stack frame for a second block per SM)."""
    return 4 if mode == MODE_FORWARD and block_h <= 32 else 8


def all_block_configs():
    """Every configuration :func:`block_config` can return."""
    return [block_config(p, h) for p in BLOCK_P_VALUES for h in BLOCK_H_VALUES]


KERNEL_SIGNATURE = {name: "*fp32" for name in (
    "a_ptr", "b_ptr", "x_ptr", "ea_ptr", "shift_ptr", "wd_ptr", "we_ptr", "w2_ptr", "b2_ptr", "wc1_ptr", "bc1_ptr",
    "wc2_ptr",
    "bc2_ptr", "gm_ptr", "gc_ptr", "node_out_ptr", "coord_out_ptr", "scatter_node_ptr", "scatter_coord_ptr",
    "g_ea_ptr", "part_mat_ptr", "part_we_ptr", "part_vec_ptr")}
KERNEL_SIGNATURE.update({name: "*i64" for name in ("rowptr_ptr", "other_ptr", "perm_ptr")})
KERNEL_SIGNATURE.update({name: "i32" for name in ("N", "P", "H", "F", "num_programs")})
KERNEL_SIGNATURE["clamp_ptr"] = "*fp32"  # the bound, in the accumulation dtype (fp32 on a GPU)
_NODE_POINTERS = ("a_ptr", "b_ptr", "x_ptr", "ea_ptr", "shift_ptr", "gm_ptr", "gc_ptr", "node_out_ptr", "coord_out_ptr",
                  "g_ea_ptr")
# The variants the registered operators launch: (name, MODE, ATOMIC)
VARIANTS = (("forward", MODE_FORWARD, False), ("receiver_grad", MODE_RECEIVER_GRAD, False),
            ("sender_grad", MODE_SENDER_GRAD, False), ("receiver_grad_atomic", MODE_RECEIVER_GRAD, True))


def aot_configurations(production_only: bool = False):
    """(name, kernel, signature, constexprs, num_warps, expect_mma) for every configuration the dispatcher can
    launch on a GPU: each block configuration x each variant with fp32 node tensors and TF32 dots (production),
    plus (unless ``production_only``) exact fp32 ("ieee") and bf16 node tensors with bf16 dots for the
    deterministic variants (the opt-in atomic variant is compiled in the production setting). The per-edge clamp
    ("edgeclamp" in the name) and the periodic shifts ("shift"), alone and together, are compiled for every variant
    in the production setting."""
    for cfg in all_block_configs():
        tag = "_".join(f"{k}{v}" for k, v in cfg.items())
        precisions = [("tf32", "*fp32", tl.float32, "tf32")]
        if not production_only:
            precisions += [("ieee", "*fp32", tl.float32, "ieee"), ("bf16", "*bf16", tl.bfloat16, "tf32")]
        for variant, mode, atomic in VARIANTS:
            for clamp, shift in ((False, False), (True, False), (False, True), (True, True)):
                optional = clamp or shift
                chosen = precisions[:1] if atomic or optional else precisions
                for precision, pointer, dot_dtype, dot_precision in chosen:
                    signature = dict(KERNEL_SIGNATURE)
                    signature.update({name: pointer for name in _NODE_POINTERS})
                    constexprs = dict(cfg, MODE=mode, ATOMIC=atomic, CLAMP_EDGES=clamp, SHIFT=shift,
                                      DOT_DTYPE=dot_dtype, DOT_PRECISION=dot_precision, ACC=tl.float32)
                    name = f"{variant}_{'edgeclamp_' if clamp else ''}{'shift_' if shift else ''}{precision}_{tag}"
                    yield (name, egnn_edge_kernel, signature, constexprs, num_warps(mode, cfg["BLOCK_H"]),
                           precision != "ieee")


# ---------------------------------------------------------------------------------------------------------------------
# Launch and autograd
# ---------------------------------------------------------------------------------------------------------------------
_ATOMIC_BACKWARD = {"enabled": False}
# Owners per step under the interpreter (CPU tensors): its cost is per step, not per row.
INTERPRETER_OWNERS_PER_STEP = 64


def use_atomic_backward(enabled: bool) -> None:
    """Opt in (or out) of the atomic backward: sender-side gradients scattered with atomics instead of a second,
    deterministic pass over the transposed CSR. Faster on a GPU, not bitwise reproducible; refused while
    ``torch.use_deterministic_algorithms(True)`` is on."""
    _ATOMIC_BACKWARD["enabled"] = bool(enabled)


def atomic_backward_enabled() -> bool:
    """Whether the opt-in atomic backward is on."""
    return _ATOMIC_BACKWARD["enabled"]


def _dot_constexprs(dtype: torch.dtype) -> Dict[str, object]:
    """How the kernel multiplies for node tensors of ``dtype``: fp64 exactly; fp32 exactly ("ieee") unless the user
    allowed TF32 for torch's matmuls; bf16/fp16 with bf16 operands. Accumulation in fp64 for fp64, else fp32."""
    if dtype == torch.float64:
        return dict(DOT_DTYPE=tl.float64, DOT_PRECISION="ieee", ACC=tl.float64)
    if dtype in (torch.bfloat16, torch.float16):
        return dict(DOT_DTYPE=tl.bfloat16, DOT_PRECISION="tf32", ACC=tl.float32)
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return dict(DOT_DTYPE=tl.float32, DOT_PRECISION="tf32" if tf32 else "ieee", ACC=tl.float32)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernel's accumulation dtype (ACC) for node tensors of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch_config(a: Tensor) -> Dict[str, int]:
    owners = 1 if a.device.type == "cuda" else INTERPRETER_OWNERS_PER_STEP
    return block_config(a.shape[1], a.shape[2], owners)


def _num_programs(a: Tensor, per_sm: int) -> int:
    """Persistent programs: a few per SM on a GPU; few under the interpreter (it runs them one by one)."""
    steps = triton.cdiv(a.shape[0], _launch_config(a)["BLOCK_R"])
    if a.device.type != "cuda":
        return max(1, min(steps, 8))
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    return max(1, min(steps, sms * per_sm))


def _launch(mode: int, atomic: bool, edge_clamp: Optional[float], tensors: Dict[str, Tensor],
            csr: Tuple[Tensor, Tensor, Tensor], outputs: Dict[str, Tensor], num_programs: int) -> None:
    """One kernel launch; ``tensors`` by the kernel's argument names (a "shift" entry: the edge shifts)."""
    a = tensors["a"]
    num_nodes, num_frames, hidden = a.shape
    cfg = _launch_config(a)
    rowptr, other, perm = csr
    dummy = outputs["node_out"]
    shift = tensors.get("shift")
    egnn_edge_kernel[(num_programs,)](
        a, tensors["b"], tensors["x"], tensors["ea"], dummy if shift is None else shift, tensors["wd"], tensors["we"],
        tensors["w2"], tensors["b2"],
        tensors["wc1"], tensors["bc1"], tensors["wc2"], tensors["bc2"], rowptr, other, perm,
        tensors.get("gm", dummy), tensors.get("gc", dummy), outputs["node_out"], outputs["coord_out"],
        outputs.get("scatter_node", dummy), outputs.get("scatter_coord", dummy), outputs.get("g_ea", dummy),
        outputs.get("part_mat", dummy), outputs.get("part_we", dummy), outputs.get("part_vec", dummy),
        num_nodes, num_frames, hidden, tensors["ea"].shape[1], num_programs,
        dummy if edge_clamp is None else torch.full((1,), edge_clamp, dtype=_accumulation_dtype(a.dtype),
                                                    device=a.device),
        MODE=mode, ATOMIC=atomic, CLAMP_EDGES=edge_clamp is not None, SHIFT=shift is not None,
        **_dot_constexprs(a.dtype), **cfg,
        num_warps=num_warps(mode, cfg["BLOCK_H"]))


# ---------------------------------------------------------------------------------------------------------------------
# The registered operators: torch.ops.egno_fast.triton_egnn_edge_forward / _backward
# ---------------------------------------------------------------------------------------------------------------------
_WEIGHT_ARGS = ", ".join(f"Tensor {name}" for name in EGNNEdgeWeights._fields)
_GRAPH_ARGS = ", ".join(f"Tensor {name}" for name in GRAPH_INPUTS)
# The argument order of the C++ operators (egno_fast::egnn_edge_forward): node tensors, weights, graph, flags.
# ``atomic_backward`` is the forward's argument so that the registered backward receives it. ``edge_clamp``: the
# bound of each component of every coordinate message (None: no clamp) and ``edge_shift`` the periodic shift [E, 3]
# of each sorted edge (None: none; no gradient), as in the C++ operators.
_FORWARD_SCHEMA = (f"(Tensor a, Tensor b, Tensor x, Tensor edge_attr, {_WEIGHT_ARGS}, {_GRAPH_ARGS}, "
                   "bool atomic_backward, float? edge_clamp=None, Tensor? edge_shift=None) "
                   "-> (Tensor msg_sum, Tensor coord_sum)")
_BACKWARD_SCHEMA = (f"(Tensor g_msg, Tensor g_coord, Tensor a, Tensor b, Tensor x, Tensor edge_attr, {_WEIGHT_ARGS}, "
                    f"{_GRAPH_ARGS}, bool atomic_backward, float? edge_clamp=None, Tensor? edge_shift=None) "
                    "-> Tensor[]")


def _check_inputs(a, b, x, edge_attr, weights, rowptr, sender, receiver, sender_rowptr, sender_perm) -> None:
    """The shapes the kernels assume, and under the interpreter (CPU tensors) the CSR invariants they rely on: the
    graph may have been changed by hand since it was built, and an index out of range would read outside a tensor.
    On CUDA the operators trust the graph: the eager entry point (egno_fast.ops.egnn_edge_sums, the layer) refuses a
    graph changed since it was validated (egno_fast/graph.py); direct calls and traced programs do not check."""
    check_edge_shapes(a, b, x, edge_attr, weights, rowptr.shape[0] - 1, sender.shape[0])
    if rowptr.device.type != "cuda":
        check_kernel_csr(a.shape[0], rowptr, sender, receiver, sender_rowptr, sender_perm)


def _kernel_tensors(a, b, x, edge_attr, weights, edge_shift=None) -> Dict[str, Tensor]:
    """The kernel's node, edge and weight inputs by its argument names, contiguous (``shift`` only when given)."""
    w = EGNNEdgeWeights(*(t.contiguous() for t in weights))
    tensors = dict(a=a.contiguous(), b=b.contiguous(), x=x.contiguous(), ea=edge_attr.contiguous(), wd=w.w_dist,
                   we=w.w_edge, w2=w.w_msg, b2=w.b_msg, wc1=w.w_coord_hidden, bc1=w.b_coord_hidden,
                   wc2=w.w_coord_out, bc2=w.b_coord_out)
    if edge_shift is not None:
        if tuple(edge_shift.shape) != (edge_attr.shape[0], 3):
            raise ValueError(f"egnn_edge: edge_shift must have shape [{edge_attr.shape[0]}, 3], got "
                             f"{list(edge_shift.shape)}")
        tensors["shift"] = edge_shift.to(x.dtype).contiguous()
    return tensors


def _forward(a, b, x, edge_attr, w_dist, w_edge, w_msg, b_msg, w_coord_hidden, b_coord_hidden, w_coord_out,
             b_coord_out, rowptr, sender, receiver, sender_rowptr, sender_perm, atomic_backward, edge_clamp=None,
             edge_shift=None):
    """(msg_sum [N, P, H], coord_sum [N, P, 3]) over the graph's edges (module docstring); any strides."""
    rowptr, sender, receiver, sender_rowptr, sender_perm = (
        t.contiguous() for t in (rowptr, sender, receiver, sender_rowptr, sender_perm))
    weights = (w_dist, w_edge, w_msg, b_msg, w_coord_hidden, b_coord_hidden, w_coord_out, b_coord_out)
    _check_inputs(a, b, x, edge_attr, weights, rowptr, sender, receiver, sender_rowptr, sender_perm)
    tensors = _kernel_tensors(a, b, x, edge_attr, weights, edge_shift)
    msg_sum, coord_sum = torch.empty_like(tensors["a"]), torch.empty_like(tensors["x"])
    _launch(MODE_FORWARD, False, edge_clamp, tensors, (rowptr, sender, sender),
            dict(node_out=msg_sum, coord_out=coord_sum), _num_programs(tensors["a"], 16))
    return msg_sum, coord_sum


def _backward_kernels(g_msg, g_coord, a, b, x, edge_attr, w_dist, w_edge, w_msg, b_msg, w_coord_hidden,
                      b_coord_hidden, w_coord_out, b_coord_out, rowptr, sender, receiver, sender_rowptr, sender_perm,
                      atomic_backward, edge_clamp=None, edge_shift=None) -> List[Tensor]:
    """The gradients of the forward's differentiable inputs, in its order: a, b, x, edge_attr, then the weights."""
    rowptr, sender, receiver, sender_rowptr, sender_perm = (
        t.contiguous() for t in (rowptr, sender, receiver, sender_rowptr, sender_perm))
    weights = (w_dist, w_edge, w_msg, b_msg, w_coord_hidden, b_coord_hidden, w_coord_out, b_coord_out)
    _check_inputs(a, b, x, edge_attr, weights, rowptr, sender, receiver, sender_rowptr, sender_perm)
    tensors = _kernel_tensors(a, b, x, edge_attr, weights, edge_shift)
    a, x, edge_attr = tensors["a"], tensors["x"], tensors["ea"]
    tensors.update(gm=g_msg.to(a.dtype).contiguous(), gc=g_coord.to(a.dtype).contiguous())
    atomic, hidden = atomic_backward, a.shape[2]
    block_h, num_features = _launch_config(a)["BLOCK_H"], edge_attr.shape[1]
    programs = _num_programs(a, 2)
    acc = _accumulation_dtype(a.dtype)
    f_pad = triton.cdiv(num_features, BLOCK_F) * BLOCK_F

    def pass_outputs(num_mats: int, edge_grads: bool) -> Dict[str, Tensor]:
        """A backward pass's node outputs and per-program partial weight gradients (kernel docstring)."""
        out = dict(node_out=torch.empty_like(a), coord_out=torch.empty_like(x),
                   part_mat=torch.zeros(programs, num_mats, block_h, block_h, dtype=acc, device=a.device),
                   part_vec=torch.zeros(programs, 5, block_h, dtype=acc, device=a.device))
        if edge_grads:
            out.update(g_ea=torch.empty_like(edge_attr),
                       part_we=torch.zeros(programs, block_h, max(f_pad, 1), dtype=acc, device=a.device))
        return out

    receiver_pass = pass_outputs(2 if atomic else 1, edge_grads=atomic)
    if atomic:
        receiver_pass.update(scatter_node=torch.zeros_like(a), scatter_coord=torch.zeros_like(x))
    _launch(MODE_RECEIVER_GRAD, atomic, edge_clamp, tensors, (rowptr, sender, sender), receiver_pass, programs)
    if atomic:  # the receiver pass did everything
        first_layer, g_b, g_x_sender = receiver_pass, receiver_pass["scatter_node"], receiver_pass["scatter_coord"]
        vecs = receiver_pass["part_vec"].sum(0)
    else:
        first_layer = pass_outputs(1, edge_grads=True)
        _launch(MODE_SENDER_GRAD, False, edge_clamp, tensors, (sender_rowptr, receiver, sender_perm), first_layer,
                programs)
        g_b, g_x_sender = first_layer["node_out"], first_layer["coord_out"]
        vecs = receiver_pass["part_vec"].sum(0) + first_layer["part_vec"].sum(0)
    vecs = vecs[:, :hidden]
    g_w2 = first_layer["part_mat"][:, 0].sum(0)[:hidden, :hidden]
    g_wc1 = receiver_pass["part_mat"][:, -1].sum(0)[:hidden, :hidden]
    g_we = first_layer["part_we"].sum(0)[:hidden, :num_features]
    # fresh tensors (an operator's outputs may not alias each other): copies of the reduced partial sums
    return [receiver_pass["node_out"], g_b, receiver_pass["coord_out"] + g_x_sender, first_layer["g_ea"],
            *(value.to(weight.dtype, copy=True) for value, weight in zip(
                (vecs[3], g_we, g_w2, vecs[0], g_wc1, vecs[1], vecs[2], vecs[4, :1]), weights))]


forward_op = torch.library.custom_op("egno_fast::triton_egnn_edge_forward", _forward, mutates_args=(),
                                     schema=_FORWARD_SCHEMA)
backward_op = torch.library.custom_op("egno_fast::triton_egnn_edge_backward", _backward_kernels, mutates_args=(),
                                      schema=_BACKWARD_SCHEMA)


@forward_op.register_fake
def _forward_fake(a, b, x, edge_attr, w_dist, w_edge, w_msg, b_msg, w_coord_hidden, b_coord_hidden, w_coord_out,
                  b_coord_out, rowptr, sender, receiver, sender_rowptr, sender_perm, atomic_backward, edge_clamp=None,
                  edge_shift=None):
    check_edge_shapes(a, b, x, edge_attr, (w_dist, w_edge, w_msg, b_msg, w_coord_hidden, b_coord_hidden, w_coord_out,
                                           b_coord_out), rowptr.shape[0] - 1, sender.shape[0])
    return a.new_empty(a.shape), x.new_empty(x.shape)


@backward_op.register_fake
def _backward_fake(g_msg, g_coord, a, b, x, edge_attr, *args):
    weights = args[:len(EGNNEdgeWeights._fields)]
    return [a.new_empty(a.shape), a.new_empty(a.shape), x.new_empty(x.shape), edge_attr.new_empty(edge_attr.shape),
            *(w.new_empty(w.shape) for w in weights)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:-3], inputs[-1])  # the tensors, then edge_shift (or None)
    ctx.atomic_backward, ctx.edge_clamp = inputs[-3:-1]
    ctx.set_materialize_grads(False)


def _backward(ctx, g_msg, g_coord):
    a, b, x, edge_attr, *rest, edge_shift = ctx.saved_tensors
    g_msg = torch.zeros_like(a) if g_msg is None else g_msg
    g_coord = torch.zeros_like(x) if g_coord is None else g_coord
    grads = backward_op(g_msg, g_coord, a, b, x, edge_attr, *rest, ctx.atomic_backward, ctx.edge_clamp, edge_shift)
    return (*grads, *([None] * len(GRAPH_INPUTS)), None, None, None)


forward_op.register_autograd(_backward, setup_context=_setup_context)
