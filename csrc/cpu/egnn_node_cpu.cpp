// Fused node half of the EGNN layer on the CPU, forward and backward: what follows the edge sums.
//
// Rows are (node, frame) pairs, [R = N P, H]; with msg_sum and coord_sum from the edge op (egnn_edge_cpu.cpp):
//   s     = w_v2 . silu(W_v1 h + b_v1) + b_v2                      velocity scale, one per row
//   x_new = x + s v + clamp(coord_sum / degree)      (per component to +-bound, the vector's norm to bound, or none)
//   h_new = W_n2 silu(W_n1 [h, msg_sum] + b_n1) + b_n2              (W_n1 as its h and msg_sum halves)
// the same function as the velocity and node MLPs of egno_fast.reference.egnn.egnn_layer_reference. The rows are cut
// into tiles of about kTileValues values whose matrix products run through ATen/BLAS, one tile per thread at a time,
// while the tile stays in cache; in PyTorch the same work is a dozen whole-tensor passes and BLAS calls that thread
// poorly at these sizes (on the N-body batch, 500 nodes x 5 frames x 64 channels, this half cost more than the edge
// half). As the edge op does, the forward stores each SiLU's value and derivative, [4, R, H], and the tiles are dealt
// to a fixed number of groups whose partial weight gradients are added in group order: results do not depend on the
// number of threads.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "activations.h"
#include "parallel.h"
#include "tiles.h"

namespace egno_fast {
namespace {

constexpr int64_t kTileValues = 16384;  // values of a [rows, H] tile (64 KB in fp32)
constexpr int64_t kMaxGroups = 16;
// The coordinate clamp of the mean coordinate message, as egno_fast.ops.egnn_node.CLAMP_MODES numbers them.
enum ClampMode : int64_t { kClampComponents = 0, kClampNorm = 1, kClampNone = 2 };

// Tiles of rows and their fixed assignment to groups (depends on R and H only).
struct RowTiles {
  int64_t rows, tile_rows, num_tiles, tiles_per_group, num_groups;
  RowTiles(int64_t rows_, int64_t hidden) : rows(rows_) {
    tile_rows = std::max<int64_t>(32, kTileValues / std::max<int64_t>(1, hidden));
    num_tiles = (rows + tile_rows - 1) / tile_rows;
    tiles_per_group = std::max<int64_t>(1, (num_tiles + kMaxGroups - 1) / kMaxGroups);
    num_groups = std::max<int64_t>(1, (num_tiles + tiles_per_group - 1) / tiles_per_group);  // 1 when R = 0
  }
  int64_t first_row(int64_t tile) const { return tile * tile_rows; }
  int64_t count(int64_t tile) const { return std::min(tile_rows, rows - tile * tile_rows); }
};

// The velocity and node MLPs' weights; matrices as tensors for the tile GEMMs (W_n1's halves as strided views).
template <typename T>
struct NodeWeights {
  at::Tensor wv1, wn1, wn1_h, wn1_m, wn2;  // [H, H], [H, 2H], [H, H] x 2, [H, H]  (out, in)
  at::Tensor bv1, bn1, bn2;                // [H]
  const T* wv2;                            // [H]
  T bv2;
};

template <typename T>
NodeWeights<T> node_weights(const at::Tensor& wv1, const at::Tensor& bv1, const at::Tensor& wv2, const at::Tensor& bv2,
                            const at::Tensor& wn1, const at::Tensor& bn1, const at::Tensor& wn2, const at::Tensor& bn2,
                            int64_t hidden) {
  const auto check = [&](const at::Tensor& t, std::vector<int64_t> shape, const char* name) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "egnn_node: ", name, " must have shape ", at::IntArrayRef(shape),
                ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.scalar_type() == c10::CppTypeToScalarType<T>::value,
                "egnn_node: ", name, " must be a contiguous CPU tensor with h's dtype");
  };
  check(wv1, {hidden, hidden}, "W_v1");
  check(bv1, {hidden}, "b_v1");
  check(wv2, {hidden}, "w_v2");
  check(bv2, {1}, "b_v2");
  check(wn1, {hidden, 2 * hidden}, "W_n1");
  check(bn1, {hidden}, "b_n1");
  check(wn2, {hidden, hidden}, "W_n2");
  check(bn2, {hidden}, "b_n2");
  return {wv1, wn1, wn1.narrow(1, 0, hidden), wn1.narrow(1, hidden, hidden), wn2, bv1, bn1, bn2,
          wv2.data_ptr<T>(), bv2.data_ptr<T>()[0]};
}

void check_rows(const at::Tensor& h, const at::Tensor& msg_sum, const at::Tensor& coord_sum, const at::Tensor& x,
                const at::Tensor& v, const at::Tensor& degree) {
  TORCH_CHECK(h.dim() == 3, "egnn_node: h must be [N, P, H], got ", h.sizes());
  const int64_t n = h.size(0), p = h.size(1);
  TORCH_CHECK(msg_sum.sizes() == h.sizes(), "egnn_node: msg_sum must match h ", h.sizes(), ", got ", msg_sum.sizes());
  for (const at::Tensor* t : {&coord_sum, &x, &v}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == n && t->size(1) == p && t->size(2) == 3,
                "egnn_node: x, v and coord_sum must be [N, P, 3] = [", n, ", ", p, ", 3], got ", t->sizes());
  }
  TORCH_CHECK(degree.dim() == 1 && degree.size(0) == n, "egnn_node: degree must be [N] with N = ", n, ", got ",
              degree.sizes());
  for (const at::Tensor* t : {&h, &msg_sum, &coord_sum, &x, &v, &degree}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu() && t->scalar_type() == h.scalar_type(),
                "egnn_node (CPU): inputs must be contiguous CPU tensors of one dtype");
  }
}

// The clamp of one row's mean coordinate message c[3] (= coord_sum / degree), in place.
template <typename T>
inline void clamp_update(int64_t mode, T bound, T* c) {
  if (mode == kClampComponents) {
    for (int64_t k = 0; k < 3; ++k) c[k] = c[k] < -bound ? -bound : (c[k] > bound ? bound : c[k]);  // NaN stays
  } else if (mode == kClampNorm) {
    const T norm = std::sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]);
    const T scale = bound / (norm > bound ? norm : bound);  // c * bound / max(|c|, bound), as the reference
    for (int64_t k = 0; k < 3; ++k) c[k] *= scale;
  }
}

// dL/dc of the norm clamp (or none), from dL/d(clamped) g[3] and the unclamped c[3], into out[3]; the per-component
// clamp's gradient is computed in the backward's loop itself.
template <typename T>
inline void clamp_update_grad(int64_t mode, T bound, const T* c, const T* g, T* out) {
  for (int64_t k = 0; k < 3; ++k) out[k] = g[k];
  if (mode == kClampNorm) {
    const T norm = std::sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]);
    if (norm >= bound) {  // y = bound c / |c|: dL/dc = (bound / |c|) (g - c (c . g) / |c|^2); at |c| = bound as torch
      const T dot_cg = c[0] * g[0] + c[1] * g[1] + c[2] * g[2];
      for (int64_t k = 0; k < 3; ++k) out[k] = bound / norm * (g[k] - c[k] * dot_cg / (norm * norm));
    }
  }
}

inline void check_clamp(int64_t mode, double bound) {
  TORCH_CHECK_VALUE(mode == kClampComponents || mode == kClampNorm || mode == kClampNone,
                    "egnn_node: clamp_mode must be 0 (per component), 1 (norm) or 2 (none), got ", mode);
  TORCH_CHECK_VALUE(bound > 0, "egnn_node: clamp_value must be positive, got ", bound);
}

// The stored activations [4, R, H]: silu(pre_v), silu'(pre_v), silu(pre_n), silu'(pre_n).
template <typename T>
struct NodeActivations {
  T *act_v, *grad_v, *act_n, *grad_n;
  explicit NodeActivations(const at::Tensor& acts) {
    const int64_t plane = acts.size(1) * acts.size(2);
    act_v = acts.data_ptr<T>();
    grad_v = act_v + plane;
    act_n = act_v + 2 * plane;
    grad_n = act_v + 3 * plane;
  }
};

template <typename T>
void forward_impl(const at::Tensor& h, const at::Tensor& msg_sum, const at::Tensor& coord_sum, const at::Tensor& x,
                  const at::Tensor& v, const at::Tensor& degree, const NodeWeights<T>& w, int64_t clamp_mode,
                  T bound, at::Tensor& x_new, at::Tensor& h_new, at::Tensor& acts) {
  const int64_t frames = h.size(1), hidden = h.size(2);
  const RowTiles tiles(h.size(0) * frames, hidden);
  const at::TensorOptions opts = h.options();
  const at::Tensor h2 = h.view({tiles.rows, hidden}), m2 = msg_sum.view({tiles.rows, hidden});
  at::Tensor out2 = h_new.view({tiles.rows, hidden});
  const at::Tensor wv1_t = w.wv1.t(), wn1h_t = w.wn1_h.t(), wn1m_t = w.wn1_m.t(), wn2_t = w.wn2.t();
  const NodeActivations<T> a(acts);
  const T *pc = coord_sum.data_ptr<T>(), *px = x.data_ptr<T>(), *pv = v.data_ptr<T>(), *deg = degree.data_ptr<T>();
  T* pxn = x_new.data_ptr<T>();

  parallel_for_below_autograd(0, tiles.num_tiles, 1, [&](int64_t t_begin, int64_t t_end) {
    AlignedVector<T> pre_buf(tiles.tile_rows * hidden);
    for (int64_t tile = t_begin; tile < t_end; ++tile) {
      const int64_t r0 = tiles.first_row(tile), rows = tiles.count(tile), off = r0 * hidden;
      at::Tensor pre = tile_view(pre_buf.data(), rows, hidden, opts);
      const at::Tensor h_tile = h2.narrow(0, r0, rows);
      // velocity MLP and the position update
      at::addmm_out(pre, w.bv1, h_tile, wv1_t);
      silu_with_grad(rows * hidden, pre_buf.data(), a.act_v + off, a.grad_v + off);
      for (int64_t r = r0; r < r0 + rows; ++r) {
        const T s = w.bv2 + dot(hidden, w.wv2, a.act_v + r * hidden);
        const T d = deg[r / frames];
        T update[3] = {pc[r * 3] / d, pc[r * 3 + 1] / d, pc[r * 3 + 2] / d};
        clamp_update(clamp_mode, bound, update);
        for (int64_t c = 0; c < 3; ++c) {
          const int64_t k = r * 3 + c;
          pxn[k] = (px[k] + s * pv[k]) + update[c];
        }
      }
      // node MLP on [h, msg_sum]
      at::addmm_out(pre, w.bn1, h_tile, wn1h_t);
      pre.addmm_(m2.narrow(0, r0, rows), wn1m_t);
      silu_with_grad(rows * hidden, pre_buf.data(), a.act_n + off, a.grad_n + off);
      at::Tensor out_tile = out2.narrow(0, r0, rows);
      at::addmm_out(out_tile, w.bn2, tile_view(a.act_n + off, rows, hidden, opts), wn2_t);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> egnn_node_forward_cpu(
    at::Tensor h, at::Tensor msg_sum, at::Tensor coord_sum, at::Tensor x, at::Tensor v, at::Tensor degree,
    at::Tensor wv1, at::Tensor bv1, at::Tensor wv2, at::Tensor bv2, at::Tensor wn1, at::Tensor bn1, at::Tensor wn2,
    at::Tensor bn2, int64_t clamp_mode, double clamp_value) {
  make_contiguous({&h, &msg_sum, &coord_sum, &x, &v, &degree, &wv1, &bv1, &wv2, &bv2, &wn1, &bn1, &wn2, &bn2});
  check_clamp(clamp_mode, clamp_value);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  check_rows(h, msg_sum, coord_sum, x, v, degree);
  at::Tensor x_new = at::empty_like(x), h_new = at::empty_like(h);
  at::Tensor acts = at::empty({4, h.size(0) * h.size(1), h.size(2)}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "egnn_node_forward_cpu", [&] {
    const auto w = node_weights<scalar_t>(wv1, bv1, wv2, bv2, wn1, bn1, wn2, bn2, h.size(2));
    forward_impl<scalar_t>(h, msg_sum, coord_sum, x, v, degree, w, clamp_mode, static_cast<scalar_t>(clamp_value),
                           x_new, h_new, acts);
  });
  return {x_new, h_new, acts};
}

// Per-group partial weight gradients, added in group order at the end.
struct NodePartials {
  at::Tensor wv1, wn1, wn2, vec;  // [G, H, H], [G, H, 2H], [G, H, H], [G, 5, H]: b_v1, w_v2, b_n1, b_n2, (b_v2 at [4][0])
};

template <typename T>
void backward_impl(const at::Tensor& g_x_new, const at::Tensor& g_h_new, const at::Tensor& acts, const at::Tensor& h,
                   const at::Tensor& msg_sum, const at::Tensor& coord_sum, const at::Tensor& v,
                   const at::Tensor& degree, const NodeWeights<T>& w, int64_t clamp_mode, T bound, at::Tensor& g_h,
                   at::Tensor& g_msg, at::Tensor& g_coord, at::Tensor& g_v, NodePartials& part) {
  const int64_t frames = h.size(1), hidden = h.size(2);
  const RowTiles tiles(h.size(0) * frames, hidden);
  const at::TensorOptions opts = h.options();
  const at::Tensor h2 = h.view({tiles.rows, hidden}), m2 = msg_sum.view({tiles.rows, hidden});
  const at::Tensor gh_new2 = g_h_new.view({tiles.rows, hidden});
  at::Tensor gh2 = g_h.view({tiles.rows, hidden}), gm2 = g_msg.view({tiles.rows, hidden});
  const NodeActivations<T> a(acts);
  const T *pc = coord_sum.data_ptr<T>(), *pv = v.data_ptr<T>(), *deg = degree.data_ptr<T>();
  const T *gxn = g_x_new.data_ptr<T>(), *ghn = g_h_new.data_ptr<T>();
  T *gc = g_coord.data_ptr<T>(), *gv = g_v.data_ptr<T>();
  part.wv1 = at::zeros({tiles.num_groups, hidden, hidden}, opts);
  part.wn1 = at::zeros({tiles.num_groups, hidden, 2 * hidden}, opts);
  part.wn2 = at::zeros({tiles.num_groups, hidden, hidden}, opts);
  part.vec = at::zeros({tiles.num_groups, 5, hidden}, opts);

  parallel_for_below_autograd(0, tiles.num_groups, 1, [&](int64_t g_begin, int64_t g_end) {
    AlignedVector<T> dv_buf(tiles.tile_rows * hidden), dn_buf(tiles.tile_rows * hidden);
    for (int64_t g = g_begin; g < g_end; ++g) {
      T* vec = part.vec[g].data_ptr<T>();
      T *d_bv1 = vec, *d_wv2 = vec + hidden, *d_bn1 = vec + 2 * hidden, *d_bn2 = vec + 3 * hidden;
      T& d_bv2 = vec[4 * hidden];
      at::Tensor d_wv1 = part.wv1[g], d_wn1 = part.wn1[g], d_wn2 = part.wn2[g];
      at::Tensor d_wn1_h = d_wn1.narrow(1, 0, hidden), d_wn1_m = d_wn1.narrow(1, hidden, hidden);
      const int64_t t_end = std::min(tiles.num_tiles, (g + 1) * tiles.tiles_per_group);
      for (int64_t tile = g * tiles.tiles_per_group; tile < t_end; ++tile) {
        const int64_t r0 = tiles.first_row(tile), rows = tiles.count(tile), off = r0 * hidden;
        const at::Tensor h_tile = h2.narrow(0, r0, rows), m_tile = m2.narrow(0, r0, rows);
        const at::Tensor gh_new_tile = gh_new2.narrow(0, r0, rows);
        at::Tensor gh_tile = gh2.narrow(0, r0, rows), gm_tile = gm2.narrow(0, r0, rows);
        // position update and velocity MLP: dL/dv, dL/dcoord_sum, dL/ds, then dL/dpre_v
        for (int64_t r = r0; r < r0 + rows; ++r) {
          const T* act_v = a.act_v + r * hidden;
          const T s = w.bv2 + dot(hidden, w.wv2, act_v);
          const T d = deg[r / frames];
          T ds = 0;
          for (int64_t c = 0; c < 3; ++c) {
            const int64_t k = r * 3 + c;
            gv[k] = s * gxn[k];
            ds += gxn[k] * pv[k];
            const T value = pc[k] / d;  // the per-component clamp passes the gradient inside, bounds included
            gc[k] = (value >= -bound && value <= bound) ? gxn[k] / d : T(0);
          }
          if (clamp_mode != kClampComponents) {  // the norm clamp (or none): the update's 3 components together
            const T update[3] = {pc[r * 3] / d, pc[r * 3 + 1] / d, pc[r * 3 + 2] / d};
            T g_update[3];
            clamp_update_grad(clamp_mode, bound, update, gxn + r * 3, g_update);
            for (int64_t c = 0; c < 3; ++c) gc[r * 3 + c] = g_update[c] / d;
          }
          d_bv2 += ds;
          const T* grad_v = a.grad_v + r * hidden;
          T* dv = dv_buf.data() + (r - r0) * hidden;
          for (int64_t c = 0; c < hidden; ++c) {
            d_wv2[c] += ds * act_v[c];
            dv[c] = ds * w.wv2[c] * grad_v[c];
            d_bv1[c] += dv[c];
          }
        }
        const at::Tensor dv = tile_view(dv_buf.data(), rows, hidden, opts);
        add_transposed_product(d_wv1, dv, h_tile);
        at::mm_out(gh_tile, dv, w.wv1);
        // node MLP: dL/dsilu(pre_n) = g_h_new W_n2, then dL/dpre_n
        at::Tensor dn = tile_view(dn_buf.data(), rows, hidden, opts);
        at::mm_out(dn, gh_new_tile, w.wn2);
        add_transposed_product(d_wn2, gh_new_tile, tile_view(a.act_n + off, rows, hidden, opts));
        for (int64_t r = 0; r < rows; ++r) {
          const T* ghr = ghn + off + r * hidden;
          const T* grad_n = a.grad_n + off + r * hidden;
          T* dnr = dn_buf.data() + r * hidden;
          for (int64_t c = 0; c < hidden; ++c) {
            d_bn2[c] += ghr[c];
            dnr[c] *= grad_n[c];
            d_bn1[c] += dnr[c];
          }
        }
        add_transposed_product(d_wn1_h, dn, h_tile);
        add_transposed_product(d_wn1_m, dn, m_tile);
        gh_tile.addmm_(dn, w.wn1_h);
        at::mm_out(gm_tile, dn, w.wn1_m);
      }
    }
  });
}

std::vector<at::Tensor> egnn_node_backward_cpu(
    const at::Tensor& g_x_new, const at::Tensor& g_h_new, const at::Tensor& acts, at::Tensor h, at::Tensor msg_sum,
    at::Tensor coord_sum, at::Tensor v, at::Tensor degree, at::Tensor wv1, at::Tensor bv1, at::Tensor wv2,
    at::Tensor bv2, at::Tensor wn1, at::Tensor bn1, at::Tensor wn2, at::Tensor bn2, int64_t clamp_mode,
    double clamp_value) {
  make_contiguous({&h, &msg_sum, &coord_sum, &v, &degree, &wv1, &bv1, &wv2, &bv2, &wn1, &bn1, &wn2, &bn2});
  check_clamp(clamp_mode, clamp_value);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  check_rows(h, msg_sum, coord_sum, v, v, degree);
  TORCH_CHECK(acts.dim() == 3 && acts.size(0) == 4 && acts.size(1) == h.size(0) * h.size(1) &&
                  acts.size(2) == h.size(2) && acts.is_contiguous(),
              "egnn_node_backward: activations must be the forward's contiguous [4, N P, H], got ", acts.sizes());
  const at::Tensor gx = g_x_new.contiguous().to(h.scalar_type()), gh = g_h_new.contiguous().to(h.scalar_type());
  TORCH_CHECK(gx.sizes() == v.sizes() && gh.sizes() == h.sizes(),
              "egnn_node_backward: gradient shapes do not match the forward's outputs");
  at::Tensor g_h = at::empty_like(h), g_msg = at::empty_like(h), g_coord = at::empty_like(v), g_v = at::empty_like(v);
  NodePartials part;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "egnn_node_backward_cpu", [&] {
    const auto w = node_weights<scalar_t>(wv1, bv1, wv2, bv2, wn1, bn1, wn2, bn2, h.size(2));
    backward_impl<scalar_t>(gx, gh, acts, h, msg_sum, coord_sum, v, degree, w, clamp_mode,
                            static_cast<scalar_t>(clamp_value), g_h, g_msg, g_coord, g_v, part);
  });
  const at::Tensor vec = ordered_sum(part.vec);  // rows copied out: an operator's outputs may not alias each other
  return {g_h, g_msg, g_coord, g_v, ordered_sum(part.wv1), vec[0].clone(), vec[1].clone(),
          vec[4].narrow(0, 0, 1).clone(), ordered_sum(part.wn1), vec[2].clone(), ordered_sum(part.wn2),
          vec[3].clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(egno_fast, CPU, m) {
  m.impl("egnn_node_forward", &egnn_node_forward_cpu);
  m.impl("egnn_node_backward", &egnn_node_backward_cpu);
}

}  // namespace egno_fast
