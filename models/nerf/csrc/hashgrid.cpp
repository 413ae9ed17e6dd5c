// Fused multi-resolution hash-grid encoding on CPU (forward, backward to the tables and to the points).
//
// Same lookup as models/nerf/encoding.py (the pure-PyTorch reference): per level l with N_l cells per axis,
// a point x in [0, 1]^3 lies in cell floor(x * N_l) (clamped to N_l - 1, so x = 1 has fraction 1); the 8
// corners' rows are dense (x + y * (N_l + 1) + z * (N_l + 1)^2) for the first `n_dense` levels and hashed
// ((x * 1 ^ y * 2654435761 ^ z * 805459861) mod T, uint32 arithmetic) otherwise; the features are blended
// trilinearly. Corner c has offsets (c & 1, (c >> 1) & 1, (c >> 2) & 1).
//
// Nothing per corner is materialised: each pass recomputes the rows and weights of one point at one level
// in registers. Forward and the point gradient run in parallel over points; the table gradient runs in
// parallel over levels (each level's table belongs to one thread, so no atomics are needed) when there are
// at least as many levels as threads, and otherwise over (level, point block) pairs into per-block
// buffers that are summed afterwards. at::parallel_for uses PyTorch's OpenMP pool and follows
// torch.set_num_threads.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;

template <typename scalar_t>
struct Cell {
  int64_t rows[8];
  scalar_t w[8];
  scalar_t frac[3];
  scalar_t dw[8][3];  // d w_c / d frac_a
};

// Position of one point in one level: clamped coordinates -> cell index and fraction per axis.
template <typename scalar_t>
inline void locate(const scalar_t* p, int64_t res, int64_t cell[3], scalar_t frac[3]) {
  const scalar_t r = static_cast<scalar_t>(res);
  for (int a = 0; a < 3; ++a) {
    scalar_t x = p[a];
    if (!(x == x)) x = 0;  // NaN
    x = x < 0 ? scalar_t(0) : (x > 1 ? scalar_t(1) : x);
    const scalar_t pos = x * r;
    scalar_t fl = std::floor(pos);
    if (fl > r - 1) fl = r - 1;
    cell[a] = static_cast<int64_t>(fl);
    frac[a] = pos - fl;
  }
}

template <typename scalar_t>
inline void corners(const scalar_t* p, int64_t res, bool dense, int64_t table_size, bool with_dw,
                    Cell<scalar_t>& c) {
  int64_t cell[3];
  locate(p, res, cell, c.frac);
  // Per-axis terms of the two vertices, combined per corner with one add / xor each.
  if (dense) {
    const int64_t side = res + 1;
    const int64_t ax[2] = {cell[0], cell[0] + 1};
    const int64_t ay[2] = {cell[1] * side, (cell[1] + 1) * side};
    const int64_t az[2] = {cell[2] * side * side, (cell[2] + 1) * side * side};
    for (int k = 0; k < 8; ++k) c.rows[k] = ax[k & 1] + ay[(k >> 1) & 1] + az[k >> 2];
  } else {
    const uint32_t mask = static_cast<uint32_t>(table_size - 1);
    const uint32_t x0 = static_cast<uint32_t>(cell[0]), y0 = static_cast<uint32_t>(cell[1]),
                   z0 = static_cast<uint32_t>(cell[2]);
    const uint32_t hx[2] = {x0, x0 + 1u};
    const uint32_t hy[2] = {y0 * kPrime1, (y0 + 1u) * kPrime1};
    const uint32_t hz[2] = {z0 * kPrime2, (z0 + 1u) * kPrime2};
    for (int k = 0; k < 8; ++k) c.rows[k] = static_cast<int64_t>((hx[k & 1] ^ hy[(k >> 1) & 1] ^ hz[k >> 2]) & mask);
  }
  const scalar_t wx[2] = {1 - c.frac[0], c.frac[0]};
  const scalar_t wy[2] = {1 - c.frac[1], c.frac[1]};
  const scalar_t wz[2] = {1 - c.frac[2], c.frac[2]};
  for (int k = 0; k < 8; ++k) {
    const int ox = k & 1, oy = (k >> 1) & 1, oz = k >> 2;
    c.w[k] = wx[ox] * wy[oy] * wz[oz];
    if (with_dw) {
      c.dw[k][0] = (ox ? 1 : -1) * wy[oy] * wz[oz];
      c.dw[k][1] = (oy ? 1 : -1) * wx[ox] * wz[oz];
      c.dw[k][2] = (oz ? 1 : -1) * wx[ox] * wy[oy];
    }
  }
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& tables, const std::vector<int64_t>& res,
                  int64_t n_dense) {
  TORCH_CHECK(x.device().is_cpu() && tables.device().is_cpu(), "fused hash grid: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "fused hash grid: x must be [n, 3], got ", x.sizes());
  TORCH_CHECK(tables.dim() == 3, "fused hash grid: tables must be [L, T, F], got ", tables.sizes());
  TORCH_CHECK(x.scalar_type() == tables.scalar_type(), "fused hash grid: x and tables must share a dtype");
  TORCH_CHECK(static_cast<int64_t>(res.size()) == tables.size(0), "fused hash grid: one resolution per level");
  TORCH_CHECK(n_dense >= 0 && n_dense <= tables.size(0), "fused hash grid: n_dense out of range");
  const int64_t t = tables.size(1);
  TORCH_CHECK(t > 0 && (t & (t - 1)) == 0, "fused hash grid: the table size must be a power of two");
}

}  // namespace

// x [n, 3], tables [L, T, F] -> [n, L * F]
torch::Tensor hashgrid_forward(torch::Tensor x, torch::Tensor tables, std::vector<int64_t> res, int64_t n_dense) {
  check_inputs(x, tables, res, n_dense);
  x = x.contiguous();
  tables = tables.contiguous();
  const int64_t n = x.size(0), L = tables.size(0), T = tables.size(1), F = tables.size(2);
  auto out = torch::empty({n, L * F}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hashgrid_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* tp = tables.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // Level-major: one level's table stays hot in cache while a block of points is looked up in it.
    const int64_t block = 8192, blocks = (n + block - 1) / block;
    at::parallel_for(0, L * blocks, 1, [&](int64_t begin, int64_t end) {
      Cell<scalar_t> c;
      for (int64_t job = begin; job < end; ++job) {
        const int64_t l = job % L, i0 = (job / L) * block, i1 = std::min(n, i0 + block);
        const scalar_t* tl = tp + l * T * F;
        for (int64_t i = i0; i < i1; ++i) {
          corners(xp + 3 * i, res[l], l < n_dense, T, false, c);
          scalar_t* o = op + (i * L + l) * F;
          for (int64_t f = 0; f < F; ++f) o[f] = 0;
          for (int k = 0; k < 8; ++k) {
            const scalar_t* row = tl + c.rows[k] * F;
            for (int64_t f = 0; f < F; ++f) o[f] += c.w[k] * row[f];
          }
        }
      }
    });
  });
  return out;
}

// grad_out [n, L * F] -> (grad_x [n, 3] or empty, grad_tables [L, T, F] or empty)
std::vector<torch::Tensor> hashgrid_backward(torch::Tensor grad_out, torch::Tensor x, torch::Tensor tables,
                                             std::vector<int64_t> res, int64_t n_dense, bool need_x,
                                             bool need_tables) {
  check_inputs(x, tables, res, n_dense);
  x = x.contiguous();
  tables = tables.contiguous();
  grad_out = grad_out.contiguous().to(x.scalar_type());
  const int64_t n = x.size(0), L = tables.size(0), T = tables.size(1), F = tables.size(2);
  TORCH_CHECK(grad_out.size(0) == n && grad_out.size(1) == L * F, "fused hash grid: grad_out shape mismatch");
  torch::Tensor grad_x, grad_tables;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hashgrid_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    if (need_tables) {
      grad_tables = torch::zeros_like(tables);
      const int64_t threads = at::get_num_threads();
      // Split the points into blocks only when the levels alone cannot keep every thread busy.
      const int64_t blocks = L >= threads ? 1 : std::min<int64_t>((threads + L - 1) / L, std::max<int64_t>(n / 4096, 1));
      std::vector<torch::Tensor> partial(blocks > 1 ? blocks - 1 : 0);
      for (auto& p : partial) p = torch::zeros_like(tables);
      scalar_t* base = grad_tables.data_ptr<scalar_t>();
      at::parallel_for(0, L * blocks, 1, [&](int64_t begin, int64_t end) {
        Cell<scalar_t> c;
        for (int64_t job = begin; job < end; ++job) {
          const int64_t l = job / blocks, b = job % blocks;
          const int64_t i0 = n * b / blocks, i1 = n * (b + 1) / blocks;
          scalar_t* gt = (b == 0 ? base : partial[b - 1].data_ptr<scalar_t>()) + l * T * F;
          for (int64_t i = i0; i < i1; ++i) {
            corners(xp + 3 * i, res[l], l < n_dense, T, false, c);
            const scalar_t* g = gp + (i * L + l) * F;
            for (int k = 0; k < 8; ++k) {
              scalar_t* row = gt + c.rows[k] * F;
              for (int64_t f = 0; f < F; ++f) row[f] += c.w[k] * g[f];
            }
          }
        }
      });
      for (auto& p : partial) grad_tables.add_(p);
    }
    if (need_x) {
      grad_x = torch::zeros_like(x);
      const scalar_t* tp = tables.data_ptr<scalar_t>();
      scalar_t* gx = grad_x.data_ptr<scalar_t>();
      at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
        Cell<scalar_t> c;
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* p = xp + 3 * i;
          scalar_t acc[3] = {0, 0, 0};
          for (int64_t l = 0; l < L; ++l) {
            corners(p, res[l], l < n_dense, T, true, c);
            const scalar_t* tl = tp + l * T * F;
            const scalar_t* g = gp + (i * L + l) * F;
            const scalar_t r = static_cast<scalar_t>(res[l]);
            for (int k = 0; k < 8; ++k) {
              const scalar_t* row = tl + c.rows[k] * F;
              scalar_t dot = 0;
              for (int64_t f = 0; f < F; ++f) dot += g[f] * row[f];
              for (int a = 0; a < 3; ++a) acc[a] += dot * c.dw[k][a] * r;
            }
          }
          // Clamping onto the cube passes the gradient only inside [0, 1] (as torch.clamp does); NaN gets none.
          for (int a = 0; a < 3; ++a) gx[3 * i + a] = (p[a] >= 0 && p[a] <= 1) ? acc[a] : scalar_t(0);
        }
      });
    }
  });
  return {need_x ? grad_x : torch::Tensor(), need_tables ? grad_tables : torch::Tensor()};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &hashgrid_forward, "fused hash-grid encoding, forward (CPU)");
  m.def("backward", &hashgrid_backward, "fused hash-grid encoding, backward (CPU)");
}
