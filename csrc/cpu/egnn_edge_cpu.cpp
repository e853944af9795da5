// Fused EGNN edge computation on the CPU: forward and backward over the receiver-sorted CSR.
//
// The node-level part of the layer is elsewhere (the first edge layer's node projections A = h W_a + b1 and
// B = h W_b in egno_fast/ops/egnn.py, the velocity and node MLPs in egnn_node_cpu.cpp); this op does everything
// per edge, for all P frames of an edge together (rows = edge x frame), on tiles of about kTileValues / H rows
// (tile_edge_count) kept in cache:
//   pre1 = A_i + B_j + w_d |r|^2 + W_e e_ij      r = x_i - x_j (+ s_ij, the edge's periodic shift, if given)
//   m    = silu(W2 silu(pre1) + b2)              (matrix products on the tile through ATen/BLAS)
//   phi  = w_c2 . silu(Wc1 m + bc1) + b_c2
//   msg_sum_i = sum_j m,  coord_sum_i = sum_j c,  c = r phi  (each component clamped to +-edge_clamp if given)
// Work is split into at most kMaxGroups groups of consecutive receivers with about equal edge counts; a group owns
// its receivers' outputs and its own partial weight gradients, which are added in group order afterwards, so the
// results do not depend on the number of threads (deterministic, no atomics).
//
// Memory choice: the forward stores, for each of the three SiLUs, its value and its derivative, [6, E, P, H]
// (silu(pre1), silu'(pre1), m = silu(pre2), silu'(pre2), silu(pre3), silu'(pre3)), instead of recomputing them.
// The backward then needs neither the tile GEMMs of the forward (a third of the layer's matrix FLOPs) nor a single
// exponential: the activations are the weight-gradient GEMMs' inputs as they are, and the derivatives multiply the
// incoming gradients. That is six [E, P, H] tensors where the reference keeps about eight; on the CPU the memory is
// there, and on the development machine the sigmoid (about 2 ns an element even in AVX2) was the largest cost.
// Where it is not (store_activations = false; egno_fast/ops/egnn_edge.py decides from a memory budget), the forward keeps
// each tile's activations in a tile buffer only and the backward recomputes them tile by tile with the same code:
// memory O(threads x tile) instead of 6 E P H values, for about a third more matrix work, identical results.
// The sender side of the backward (dL/dB_j and the sender part of dL/dx) is gathered over the transposed CSR from the
// stored per-row dL/dpre1 and dL/dr: deterministic as well.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "parallel.h"

#include <algorithm>
#include <vector>

#include "activations.h"
#include "csr_checks.h"
#include "buffer_pool.h"
#include "tiles.h"

namespace egno_fast {
namespace {

constexpr int64_t kTileValues = 32768;  // values of a [rows, H] tile: 128 KB in fp32, a few of them stay in L2

// Edges per tile: all P frames of an edge in one tile, about kTileValues / H rows (at least 64).
inline int64_t tile_edge_count(int64_t frames, int64_t hidden) {
  const int64_t rows = std::max<int64_t>(64, kTileValues / std::max<int64_t>(1, hidden));
  return std::max<int64_t>(1, rows / frames);
}
constexpr int64_t kMaxGroups = 64;  // fixed work split: partial sums do not depend on the thread count

// Boundaries of node groups [bounds[g], bounds[g+1]) of whole receivers. Small graphs: receivers packed greedily
// into groups of at most tile_edges edges (one tile each, unless a receiver alone has more) when that needs at most
// kMaxGroups groups; otherwise kMaxGroups groups of about E / kMaxGroups edges. Depends on the graph only.
std::vector<int64_t> node_groups(const int64_t* rowptr, int64_t num_nodes, int64_t tile_edges) {
  std::vector<int64_t> bounds{0};
  for (int64_t n = 0; n + 1 < num_nodes; ++n) {
    if (rowptr[n + 2] - rowptr[bounds.back()] > tile_edges) bounds.push_back(n + 1);
  }
  bounds.push_back(num_nodes);
  if (static_cast<int64_t>(bounds.size()) - 1 <= kMaxGroups) return bounds;
  const int64_t target = (rowptr[num_nodes] + kMaxGroups - 1) / kMaxGroups;
  bounds.assign(1, 0);
  for (int64_t n = 0; n + 1 < num_nodes; ++n) {
    if (rowptr[n + 1] - rowptr[bounds.back()] >= target) bounds.push_back(n + 1);
  }
  bounds.push_back(num_nodes);
  return bounds;
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& x, const at::Tensor& edge_attr,
                  const at::Tensor& rowptr, const at::Tensor& sender, const at::Tensor& receiver) {
  TORCH_CHECK(a.dim() == 3 && b.sizes() == a.sizes(), "egnn_edge: a and b must be [N, P, H] of the same shape, got ",
              a.sizes(), " and ", b.sizes());
  const int64_t n = a.size(0), p = a.size(1);
  TORCH_CHECK(x.dim() == 3 && x.size(0) == n && x.size(1) == p && x.size(2) == 3, "egnn_edge: x must be [N, P, 3] = [",
              n, ", ", p, ", 3], got ", x.sizes());
  const int64_t e = sender.size(0);
  check_offsets("egnn_edge", "rowptr", rowptr, n, e);
  check_indices("egnn_edge", "sender", sender, e, n);
  check_indices("egnn_edge", "receiver", receiver, e, n);
  check_row_owners("egnn_edge", "receiver", rowptr, receiver, nullptr);
  TORCH_CHECK(edge_attr.dim() == 2 && edge_attr.size(0) == e, "egnn_edge: edge_attr must be [E, f] with E = ", e,
              ", got ", edge_attr.sizes());
  for (const at::Tensor* t : {&a, &b, &x, &edge_attr, &rowptr, &sender, &receiver}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(), "egnn_edge (CPU): inputs must be contiguous CPU tensors");
  }
  for (const at::Tensor* t : {&b, &x, &edge_attr}) {
    TORCH_CHECK(t->scalar_type() == a.scalar_type(), "egnn_edge: all float inputs must share a's dtype ",
                a.scalar_type(), ", got ", t->scalar_type());
  }
}

// r = x_i - x_j (+ shift[3], the edge's periodic shift, unless null) of frame p into rv[3]; returns |r|^2.
template <typename T>
inline T relative_position(const T* x, const T* shift, int64_t i, int64_t j, int64_t p, int64_t frames, T* rv) {
  const T* xi = x + (i * frames + p) * 3;
  const T* xj = x + (j * frames + p) * 3;
  rv[0] = xi[0] - xj[0];
  rv[1] = xi[1] - xj[1];
  rv[2] = xi[2] - xj[2];
  if (shift != nullptr) {
    rv[0] += shift[0];
    rv[1] += shift[1];
    rv[2] += shift[2];
  }
  return rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2];
}

// The edge shifts [E, 3] (sorted edge order, the activations' dtype) checked, or null when there are none.
template <typename T>
const T* edge_shift_data(const c10::optional<at::Tensor>& edge_shift, int64_t num_edges) {
  if (!edge_shift.has_value()) return nullptr;
  const at::Tensor& shift = *edge_shift;
  TORCH_CHECK(shift.dim() == 2 && shift.size(0) == num_edges && shift.size(1) == 3, "egnn_edge: edge_shift must be ",
              "[E, 3] with E = ", num_edges, ", got ", shift.sizes());
  TORCH_CHECK(shift.is_contiguous() && shift.device().is_cpu() &&
                  shift.scalar_type() == c10::CppTypeToScalarType<T>::value,
              "egnn_edge: edge_shift must be a contiguous CPU tensor of the activations' dtype");
  return shift.data_ptr<T>();
}

// The weights of the edge computation, as raw pointers, with the matrices as tensors for the tile GEMMs.
template <typename T>
struct EdgeWeights {
  const T *wd, *b2, *bc1, *wc2;
  T bc2;
  at::Tensor we, w2, wc1;  // [H, f], [H, H] (out, in), [H, H]
};

template <typename T>
EdgeWeights<T> edge_weights(const at::Tensor& wd, const at::Tensor& we, const at::Tensor& w2, const at::Tensor& b2,
                            const at::Tensor& wc1, const at::Tensor& bc1, const at::Tensor& wc2,
                            const at::Tensor& bc2, int64_t hidden, int64_t features) {
  const auto check = [&](const at::Tensor& t, std::vector<int64_t> shape, const char* name) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "egnn_edge: ", name, " must have shape ", at::IntArrayRef(shape),
                ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == c10::CppTypeToScalarType<T>::value, "egnn_edge: ", name,
                " must be contiguous with the activations' dtype");
  };
  check(wd, {hidden}, "w_d");
  check(we, {hidden, features}, "W_e");
  check(w2, {hidden, hidden}, "W2");
  check(b2, {hidden}, "b2");
  check(wc1, {hidden, hidden}, "Wc1");
  check(bc1, {hidden}, "bc1");
  check(wc2, {hidden}, "w_c2");
  check(bc2, {1}, "b_c2");
  return {wd.data_ptr<T>(), b2.data_ptr<T>(), bc1.data_ptr<T>(), wc2.data_ptr<T>(), bc2.data_ptr<T>()[0], we, w2,
          wc1};
}

// The coordinate message's "edge" clamp: each component of c = r phi to [-bound, bound] (NaN stays NaN).
template <typename T>
struct EdgeClamp {
  bool active;
  T bound;
  explicit EdgeClamp(const c10::optional<double>& edge_clamp)
      : active(edge_clamp.has_value()), bound(static_cast<T>(edge_clamp.value_or(0.0))) {
    TORCH_CHECK(!active || *edge_clamp > 0, "egnn_edge: edge_clamp must be positive, got ", edge_clamp.value_or(0.0));
  }
  T operator()(T c) const { return active ? std::min(std::max(c, -bound), bound) : c; }
  // the gradient of c's component through the clamp: g where -bound <= c <= bound (torch.clamp's), else 0
  T grad(T g, T c) const { return !active || (c >= -bound && c <= bound) ? g : T(0); }
};

// Row kernels (restrict pointers so that the compiler vectorises them), n = H values each.
// pre1 = A_i + B_j + w_d |r|^2 (+ W_e e_ij when ew is given).
template <typename T>
inline void first_layer_row(int64_t n, const T* __restrict__ a_i, const T* __restrict__ b_j, const T* __restrict__ wd,
                            T d2, const T* __restrict__ ew, T* __restrict__ pre) {
  if (ew != nullptr) {
    for (int64_t h = 0; h < n; ++h) pre[h] = a_i[h] + b_j[h] + wd[h] * d2 + ew[h];
  } else {
    for (int64_t h = 0; h < n; ++h) pre[h] = a_i[h] + b_j[h] + wd[h] * d2;
  }
}

template <typename T>
inline void add_row(int64_t n, const T* __restrict__ src, T* __restrict__ dst) {
  for (int64_t h = 0; h < n; ++h) dst[h] += src[h];
}

// The six activation arrays of a tile's rows: in the stored [6, E, P, H] tensor, or in a tile-sized buffer.
template <typename T>
struct ActivationRows {
  T *act1, *grad1, *m, *grad2, *act3, *grad3;
};

// Rows from row0 on of the stored activations [6, E, P, H].
template <typename T>
inline ActivationRows<T> activation_rows(const at::Tensor& acts, int64_t row0) {
  const int64_t plane = acts.size(1) * acts.size(2) * acts.size(3);
  T* base = acts.data_ptr<T>() + row0 * acts.size(3);
  return {base, base + plane, base + 2 * plane, base + 3 * plane, base + 4 * plane, base + 5 * plane};
}

// A tile's own activation buffer [6, rows_max, H] (recompute mode: nothing stored between forward and backward).
template <typename T>
inline ActivationRows<T> buffer_rows(AlignedVector<T>& buffer, int64_t rows_max, int64_t hidden) {
  const int64_t plane = rows_max * hidden;
  buffer.resize(6 * plane);
  T* base = buffer.data();
  return {base, base + plane, base + 2 * plane, base + 3 * plane, base + 4 * plane, base + 5 * plane};
}

// What the forward computation of a tile reads; shared by the forward and the recomputing backward.
template <typename T>
struct EdgeForward {
  const T *a, *b, *x, *shift;  // shift: [E, 3] or null
  const int64_t *sender, *receiver;
  int64_t frames, hidden, features;
  const at::Tensor& edge_attr;
  const EdgeWeights<T>& w;
  at::Tensor w2_t, wc1_t, we_t, bias2, bias_c1;
  at::TensorOptions opts;

  EdgeForward(const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& x_, const at::Tensor& edge_attr_,
              const EdgeWeights<T>& w_, const at::Tensor& sender_, const at::Tensor& receiver_,
              const c10::optional<at::Tensor>& edge_shift)
      : a(a_.data_ptr<T>()), b(b_.data_ptr<T>()), x(x_.data_ptr<T>()),
        shift(edge_shift_data<T>(edge_shift, sender_.size(0))), sender(sender_.data_ptr<int64_t>()),
        receiver(receiver_.data_ptr<int64_t>()), frames(a_.size(1)), hidden(a_.size(2)),
        features(edge_attr_.size(1)), edge_attr(edge_attr_), w(w_), w2_t(w_.w2.t()), wc1_t(w_.wc1.t()),
        we_t(w_.we.t()), opts(a_.options()) {
    bias2 = at::from_blob(const_cast<T*>(w_.b2), {hidden}, opts);
    bias_c1 = at::from_blob(const_cast<T*>(w_.bc1), {hidden}, opts);
  }

  // Edges [e0, e1): the three SiLUs' values and derivatives into t, and r = x_i - x_j into rel [rows, 3].
  // pre: [rows, H] scratch; ew_buf: [tile_edges, H] scratch for W_e e.
  void tile(int64_t e0, int64_t e1, const ActivationRows<T>& t, T* pre_data, T* rel, at::Tensor& ew_buf) const {
    const int64_t rows = (e1 - e0) * frames;
    const T* ew = nullptr;
    if (features > 0) {
      at::Tensor ew_tile = ew_buf.narrow(0, 0, e1 - e0);
      at::mm_out(ew_tile, edge_attr.narrow(0, e0, e1 - e0), we_t);
      ew = ew_tile.data_ptr<T>();
    }
    for (int64_t k = e0; k < e1; ++k) {
      const int64_t i = receiver[k], j = sender[k];
      for (int64_t p = 0; p < frames; ++p) {
        const int64_t r = (k - e0) * frames + p;
        const T d2 = relative_position(x, shift != nullptr ? shift + k * 3 : nullptr, i, j, p, frames, rel + r * 3);
        first_layer_row(hidden, a + (i * frames + p) * hidden, b + (j * frames + p) * hidden, w.wd, d2,
                        ew != nullptr ? ew + (k - e0) * hidden : nullptr, pre_data + r * hidden);
      }
    }
    at::Tensor pre = tile_view(pre_data, rows, hidden, opts);
    silu_with_grad(rows * hidden, pre_data, t.act1, t.grad1);
    at::addmm_out(pre, bias2, tile_view(t.act1, rows, hidden, opts), w2_t);
    silu_with_grad(rows * hidden, pre_data, t.m, t.grad2);
    at::addmm_out(pre, bias_c1, tile_view(t.m, rows, hidden, opts), wc1_t);
    silu_with_grad(rows * hidden, pre_data, t.act3, t.grad3);
  }
};

// acts: the stored [6, E, P, H], or empty (recompute mode: each tile's activations live in a tile buffer).
template <typename T>
void forward_impl(const EdgeForward<T>& f, const at::Tensor& rowptr, const EdgeClamp<T>& clamp, at::Tensor& msg_sum,
                  at::Tensor& coord_sum, at::Tensor& acts) {
  const int64_t num_nodes = msg_sum.size(0), frames = f.frames, hidden = f.hidden;
  const int64_t tile_edges = tile_edge_count(frames, hidden);
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  const std::vector<int64_t> bounds = node_groups(rp, num_nodes, tile_edges);
  const bool stored = acts.size(0) > 0;
  T *msg = msg_sum.data_ptr<T>(), *coord = coord_sum.data_ptr<T>();

  parallel_for_below_autograd(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t g_begin, int64_t g_end) {
    const int64_t rows_max = tile_edges * frames;
    AlignedVector<T> pre_buf(rows_max * hidden), act_buf;
    std::vector<T> rel(rows_max * 3);
    at::Tensor ew_buf = at::empty({f.features > 0 ? tile_edges : 0, hidden}, f.opts);
    for (int64_t g = g_begin; g < g_end; ++g) {
      const int64_t n0 = bounds[g], n1 = bounds[g + 1];
      std::fill(msg + n0 * frames * hidden, msg + n1 * frames * hidden, T(0));
      std::fill(coord + n0 * frames * 3, coord + n1 * frames * 3, T(0));
      for (int64_t e0 = rp[n0]; e0 < rp[n1]; e0 += tile_edges) {
        const int64_t e1 = std::min(e0 + tile_edges, rp[n1]);
        const ActivationRows<T> t =
            stored ? activation_rows<T>(acts, e0 * frames) : buffer_rows(act_buf, rows_max, hidden);
        f.tile(e0, e1, t, pre_buf.data(), rel.data(), ew_buf);
        for (int64_t k = e0; k < e1; ++k) {
          const int64_t i = f.receiver[k];
          for (int64_t p = 0; p < frames; ++p) {
            const int64_t r = (k - e0) * frames + p;
            const T phi = f.w.bc2 + dot(hidden, f.w.wc2, t.act3 + r * hidden);
            T* ci = coord + (i * frames + p) * 3;
            const T* rv = rel.data() + r * 3;
            ci[0] += clamp(rv[0] * phi);
            ci[1] += clamp(rv[1] * phi);
            ci[2] += clamp(rv[2] * phi);
            add_row(hidden, t.m + r * hidden, msg + (i * frames + p) * hidden);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> egnn_edge_forward_cpu(
    at::Tensor a, at::Tensor b, at::Tensor x, at::Tensor edge_attr, at::Tensor wd, at::Tensor we, at::Tensor w2,
    at::Tensor b2, at::Tensor wc1, at::Tensor bc1, at::Tensor wc2, at::Tensor bc2, at::Tensor rowptr,
    at::Tensor sender, at::Tensor receiver, const at::Tensor& /*sender_rowptr*/, const at::Tensor& /*sender_perm*/,
    bool store_activations, c10::optional<double> edge_clamp, c10::optional<at::Tensor> edge_shift) {
  // the transposed CSR is an input so that the registered backward receives it; the backward checks it
  make_contiguous({&a, &b, &x, &edge_attr, &wd, &we, &w2, &b2, &wc1, &bc1, &wc2, &bc2, &rowptr, &sender, &receiver});
  if (edge_shift.has_value()) edge_shift = edge_shift->contiguous();
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  check_inputs(a, b, x, edge_attr, rowptr, sender, receiver);
  at::Tensor msg_sum = at::empty_like(a), coord_sum = at::empty_like(x);
  at::Tensor acts = store_activations ? empty_cached({6, sender.size(0), a.size(1), a.size(2)}, a.options())
                                      : at::empty({0, sender.size(0), a.size(1), a.size(2)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "egnn_edge_forward_cpu", [&] {
    const auto w = edge_weights<scalar_t>(wd, we, w2, b2, wc1, bc1, wc2, bc2, a.size(2), edge_attr.size(1));
    forward_impl<scalar_t>(EdgeForward<scalar_t>(a, b, x, edge_attr, w, sender, receiver, edge_shift), rowptr,
                           EdgeClamp<scalar_t>(edge_clamp), msg_sum, coord_sum, acts);
  });
  return {msg_sum, coord_sum, acts};
}

// Per-group partial weight gradients, added in group order at the end.
struct Partials {
  at::Tensor w2, wc1, we, vec;  // [G, H, H], [G, H, H], [G, H, f], [G, 5, H]: b2, bc1, wc2, wd, (bc2 at [4][0])
};

// Coordinate MLP, backward of one row: dpre3 = dphi w_c2 silu'(pre3); accumulates dL/dw_c2 and dL/dbc1.
template <typename T>
inline void pre3_grad_row(int64_t n, const T* __restrict__ act3, const T* __restrict__ grad3,
                          const T* __restrict__ wc2, T dphi, T* __restrict__ dpre3, T* __restrict__ d_wc2,
                          T* __restrict__ d_bc1) {
  for (int64_t h = 0; h < n; ++h) {
    d_wc2[h] += dphi * act3[h];
    dpre3[h] = dphi * wc2[h] * grad3[h];
    d_bc1[h] += dpre3[h];
  }
}

// dpre2 = (g_msg_i + dL/dm) silu'(pre2), accumulating dL/db2.
template <typename T>
inline void pre2_grad_row(int64_t n, const T* __restrict__ g_msg, const T* __restrict__ dm,
                          const T* __restrict__ grad2, T* __restrict__ dpre2, T* __restrict__ d_b2) {
  for (int64_t h = 0; h < n; ++h) {
    dpre2[h] = (g_msg[h] + dm[h]) * grad2[h];
    d_b2[h] += dpre2[h];
  }
}

// dpre1 = dL/ds1 silu'(pre1), into dpre1 (kept for the sender pass), g_a_i, dL/dw_d and the per-edge sum over
// frames; returns dL/d|r|^2.
template <typename T>
inline T pre1_grad_row(int64_t n, const T* __restrict__ ds1, const T* __restrict__ grad1, const T* __restrict__ wd,
                       T d2, T* __restrict__ dpre1, T* __restrict__ g_a, T* __restrict__ d_wd,
                       T* __restrict__ edge_sum) {
  T dd2 = 0;
  for (int64_t h = 0; h < n; ++h) {
    const T v = ds1[h] * grad1[h];
    dpre1[h] = v;
    g_a[h] += v;
    d_wd[h] += v * d2;
    dd2 += v * wd[h];
    edge_sum[h] += v;
  }
  return dd2;
}

// acts: the forward's stored [6, E, P, H], or empty: then each tile's activations are recomputed by the forward's
// tile code (same tiles, same operations: bitwise the stored values) into a tile buffer.
template <typename T>
void backward_impl(const at::Tensor& g_msg, const at::Tensor& g_coord, const at::Tensor& acts,
                   const EdgeForward<T>& f, const at::Tensor& x, const at::Tensor& edge_attr, const EdgeWeights<T>& w,
                   const at::Tensor& rowptr, const at::Tensor& sender, const at::Tensor& receiver,
                   const at::Tensor& sender_rowptr, const at::Tensor& sender_perm, const EdgeClamp<T>& clamp,
                   at::Tensor& g_a, at::Tensor& g_b,
                   at::Tensor& g_x, at::Tensor& g_edge_attr, Partials& part) {
  const int64_t num_nodes = x.size(0), frames = x.size(1), hidden = acts.size(3);
  const bool stored = acts.size(0) > 0;
  const int64_t num_edges = sender.size(0), features = edge_attr.size(1);
  const int64_t tile_edges = tile_edge_count(frames, hidden);
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  const std::vector<int64_t> bounds = node_groups(rp, num_nodes, tile_edges);
  const int64_t num_groups = static_cast<int64_t>(bounds.size()) - 1;
  const int64_t* snd = sender.data_ptr<int64_t>();
  const int64_t* rcv = receiver.data_ptr<int64_t>();
  const T *px = x.data_ptr<T>(), *gm = g_msg.data_ptr<T>(), *gc = g_coord.data_ptr<T>();
  const at::TensorOptions opts = x.options();
  part.w2 = at::zeros({num_groups, hidden, hidden}, opts);
  part.wc1 = at::zeros({num_groups, hidden, hidden}, opts);
  part.we = at::zeros({num_groups, hidden, features}, opts);
  part.vec = at::zeros({num_groups, 5, hidden}, opts);
  // dL/dpre1 and dL/dr per row, for the sender pass
  at::Tensor d1_all = empty_cached({num_edges * frames, hidden}, opts);
  std::vector<T> dr_all(num_edges * frames * 3);
  T *ga = g_a.data_ptr<T>(), *gx = g_x.data_ptr<T>();

  parallel_for_below_autograd(0, num_groups, 1, [&](int64_t g_begin, int64_t g_end) {
    const int64_t rows_max = tile_edges * frames;
    AlignedVector<T> dpre_buf(rows_max * hidden);  // dL/dpre3, then dL/dpre2
    AlignedVector<T> dact_buf(rows_max * hidden);  // dL/dm, then dL/dsilu(pre1)
    at::Tensor d1sum_buf = at::empty({tile_edges, hidden}, opts);
    std::vector<T> rel(rows_max * 3), g_c(rows_max * 3), phi(rows_max);  // g_c: dL/dc through the clamp
    AlignedVector<T> act_buf;
    at::Tensor ew_buf = at::empty({!stored && features > 0 ? tile_edges : 0, hidden}, opts);
    for (int64_t g = g_begin; g < g_end; ++g) {
      T* vec = part.vec[g].data_ptr<T>();
      T *d_b2 = vec, *d_bc1 = vec + hidden, *d_wc2 = vec + 2 * hidden, *d_wd = vec + 3 * hidden;
      T& d_bc2 = vec[4 * hidden];
      at::Tensor d_w2 = part.w2[g], d_wc1 = part.wc1[g], d_we = part.we[g];
      const int64_t n0 = bounds[g], n1 = bounds[g + 1];
      std::fill(ga + n0 * frames * hidden, ga + n1 * frames * hidden, T(0));
      std::fill(gx + n0 * frames * 3, gx + n1 * frames * 3, T(0));
      for (int64_t e0 = rp[n0]; e0 < rp[n1]; e0 += tile_edges) {
        const int64_t e1 = std::min(e0 + tile_edges, rp[n1]);
        const int64_t rows = (e1 - e0) * frames;
        ActivationRows<T> t;
        if (stored) {
          t = activation_rows<T>(acts, e0 * frames);
        } else {  // dpre_buf as the forward's scratch: it is written below before being read
          t = buffer_rows(act_buf, rows_max, hidden);
          f.tile(e0, e1, t, dpre_buf.data(), rel.data(), ew_buf);
        }
        const T *act3 = t.act3, *grad3 = t.grad3, *grad2 = t.grad2, *grad1 = t.grad1;
        T *pdpre = dpre_buf.data(), *pdact = dact_buf.data();
        const at::Tensor dpre = tile_view(pdpre, rows, hidden, opts);
        at::Tensor dact = tile_view(pdact, rows, hidden, opts);
        // coordinate MLP: phi, dL/dc = g_coord_i (through the clamp), dL/dphi = dL/dc . r, dL/dpre3
        for (int64_t k = e0; k < e1; ++k) {
          const int64_t i = rcv[k], j = snd[k];
          for (int64_t p = 0; p < frames; ++p) {
            const int64_t r = (k - e0) * frames + p;
            const T* gci = gc + (i * frames + p) * 3;
            T* rv = rel.data() + r * 3;
            relative_position(px, f.shift != nullptr ? f.shift + k * 3 : nullptr, i, j, p, frames, rv);
            phi[r] = w.bc2 + dot(hidden, w.wc2, act3 + r * hidden);
            T* gcr = g_c.data() + r * 3;
            for (int c = 0; c < 3; ++c) gcr[c] = clamp.grad(gci[c], rv[c] * phi[r]);
            const T dp = gcr[0] * rv[0] + gcr[1] * rv[1] + gcr[2] * rv[2];
            pre3_grad_row(hidden, act3 + r * hidden, grad3 + r * hidden, w.wc2, dp, pdpre + r * hidden, d_wc2,
                          d_bc1);
            d_bc2 += dp;
          }
        }
        add_transposed_product(d_wc1, dpre, tile_view(t.m, rows, hidden, opts));  // dL/dWc1 += dpre3^T m
        at::mm_out(dact, dpre, w.wc1);  // dL/dm from the coordinate MLP
        for (int64_t k = e0; k < e1; ++k) {
          const int64_t i = rcv[k];
          for (int64_t p = 0; p < frames; ++p) {
            const int64_t r = (k - e0) * frames + p;
            pre2_grad_row(hidden, gm + (i * frames + p) * hidden, pdact + r * hidden, grad2 + r * hidden,
                          pdpre + r * hidden, d_b2);
          }
        }
        add_transposed_product(d_w2, dpre, tile_view(t.act1, rows, hidden, opts));  // dL/dW2 += dpre2^T silu(pre1)
        at::mm_out(dact, dpre, w.w2);   // dL/dsilu(pre1)
        // dL/dpre1: to A_i (receiver, here), B_j (sender pass), w_d, W_e, e_ij, and r through |r|^2
        T* d1 = d1_all.data_ptr<T>() + e0 * frames * hidden;
        T* d1sum = d1sum_buf.data_ptr<T>();
        for (int64_t k = e0; k < e1; ++k) {
          const int64_t i = rcv[k];
          T* d1s = d1sum + (k - e0) * hidden;
          std::fill(d1s, d1s + hidden, T(0));
          for (int64_t p = 0; p < frames; ++p) {
            const int64_t r = (k - e0) * frames + p;
            const T* rv = rel.data() + r * 3;
            const T d2 = rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2];
            const T dd2 = pre1_grad_row(hidden, pdact + r * hidden, grad1 + r * hidden, w.wd, d2, d1 + r * hidden,
                                        ga + (i * frames + p) * hidden, d_wd, d1s);
            const T* gcr = g_c.data() + r * 3;
            T* dr = dr_all.data() + (k * frames + p) * 3;
            T* gxi = gx + (i * frames + p) * 3;
            for (int c = 0; c < 3; ++c) {
              dr[c] = gcr[c] * phi[r] + T(2) * rv[c] * dd2;
              gxi[c] += dr[c];
            }
          }
        }
        if (features > 0) {
          at::Tensor d1s = d1sum_buf.narrow(0, 0, e1 - e0);
          at::Tensor g_ea = g_edge_attr.narrow(0, e0, e1 - e0);
          at::mm_out(g_ea, d1s, w.we);
          add_transposed_product(d_we, d1s, edge_attr.narrow(0, e0, e1 - e0));
        }
      }
    }
  });

  // sender pass: dL/dB_j = sum of dL/dpre1 over the edges j sends; dL/dx_j -= sum of dL/dr
  const int64_t* srp = sender_rowptr.data_ptr<int64_t>();
  const int64_t* sperm = sender_perm.data_ptr<int64_t>();
  const T* d1 = d1_all.data_ptr<T>();
  T* gb = g_b.data_ptr<T>();
  parallel_for_below_autograd(0, num_nodes, 64, [&](int64_t j_begin, int64_t j_end) {
    for (int64_t j = j_begin; j < j_end; ++j) {
      T* gbj = gb + j * frames * hidden;
      std::fill(gbj, gbj + frames * hidden, T(0));
      T* gxj = gx + j * frames * 3;
      for (int64_t s = srp[j]; s < srp[j + 1]; ++s) {
        const int64_t k = sperm[s];
        const T* d1k = d1 + k * frames * hidden;
        for (int64_t idx = 0; idx < frames * hidden; ++idx) gbj[idx] += d1k[idx];
        const T* dr = dr_all.data() + k * frames * 3;
        for (int64_t idx = 0; idx < frames * 3; ++idx) gxj[idx] -= dr[idx];
      }
    }
  });
}

std::vector<at::Tensor> egnn_edge_backward_cpu(
    const at::Tensor& g_msg, const at::Tensor& g_coord, const at::Tensor& acts, at::Tensor a, at::Tensor b,
    at::Tensor x, at::Tensor edge_attr, at::Tensor wd, at::Tensor we, at::Tensor w2, at::Tensor b2, at::Tensor wc1,
    at::Tensor bc1, at::Tensor wc2, at::Tensor bc2, at::Tensor rowptr, at::Tensor sender, at::Tensor receiver,
    at::Tensor sender_rowptr, at::Tensor sender_perm, c10::optional<double> edge_clamp,
    c10::optional<at::Tensor> edge_shift) {
  make_contiguous({&a, &b, &x, &edge_attr, &wd, &we, &w2, &b2, &wc1, &bc1, &wc2, &bc2, &rowptr, &sender, &receiver,
                   &sender_rowptr, &sender_perm});
  if (edge_shift.has_value()) edge_shift = edge_shift->contiguous();
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  TORCH_CHECK(acts.dim() == 4 && (acts.size(0) == 6 || acts.size(0) == 0) && acts.size(1) == sender.size(0) &&
                  acts.size(2) == x.size(1) && acts.is_contiguous(),
              "egnn_edge_backward: activations must be the forward's contiguous [6, E, P, H] (or [0, E, P, H] when ",
              "the forward stored none), got ", acts.sizes());
  TORCH_CHECK(a.sizes() == g_msg.sizes() && b.sizes() == a.sizes() && a.is_contiguous() && b.is_contiguous() &&
                  a.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type(),
              "egnn_edge_backward: a and b must be the forward's contiguous [N, P, H] node projections");
  const at::Tensor g_msg_c = g_msg.contiguous(), g_coord_c = g_coord.contiguous();
  TORCH_CHECK(g_msg_c.dim() == 3 && g_msg_c.size(0) == x.size(0) && g_msg_c.size(2) == acts.size(3) &&
                  g_coord_c.sizes() == x.sizes(),
              "egnn_edge_backward: gradient shapes do not match the forward's outputs");
  check_inputs(a, b, x, edge_attr, rowptr, sender, receiver);  // the graph may have been changed since the forward
  check_offsets("egnn_edge_backward", "sender_rowptr", sender_rowptr, x.size(0), sender.size(0));
  check_permutation("egnn_edge_backward", "sender_perm", sender_perm, sender.size(0));
  check_row_owners("egnn_edge_backward", "sender[sender_perm]", sender_rowptr, sender, &sender_perm);
  at::Tensor g_a = at::empty_like(a), g_b = at::empty_like(a), g_x = at::empty_like(x);
  at::Tensor g_edge_attr = at::zeros_like(edge_attr);
  Partials part;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "egnn_edge_backward_cpu", [&] {
    const auto w = edge_weights<scalar_t>(wd, we, w2, b2, wc1, bc1, wc2, bc2, acts.size(3), edge_attr.size(1));
    backward_impl<scalar_t>(g_msg_c.to(x.scalar_type()), g_coord_c.to(x.scalar_type()), acts,
                            EdgeForward<scalar_t>(a, b, x, edge_attr, w, sender, receiver, edge_shift), x, edge_attr, w,
                            rowptr,
                            sender, receiver, sender_rowptr, sender_perm, EdgeClamp<scalar_t>(edge_clamp), g_a, g_b,
                            g_x, g_edge_attr, part);
  });
  const at::Tensor vec = ordered_sum(part.vec);  // rows copied out: an operator's outputs may not alias each other
  return {g_a, g_b, g_x, g_edge_attr, vec[3].clone(), ordered_sum(part.we), ordered_sum(part.w2), vec[0].clone(),
          ordered_sum(part.wc1), vec[1].clone(), vec[2].clone(), vec[4].narrow(0, 0, 1).clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(egno_fast, CPU, m) {
  m.impl("egnn_edge_forward", &egnn_edge_forward_cpu);
  m.impl("egnn_edge_backward", &egnn_edge_backward_cpu);
}

}  // namespace egno_fast
