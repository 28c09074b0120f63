// EMC kernels: the CUDA twins of spibatch/kernels/emc_cpu.py.
//
// Conventions as on the CPU: the model is (M, M, M) float32 indexed [qx, qy, qz] with
// q = 0 at c = (M - 1) / 2; a pixel's model coordinate under rotation R is R q;
// views are pixel-major (T, R), so threads along rotations read and write contiguous rows.
// Launched through CuPy RawModule (default) or PyCUDA SourceModule from this one source.

extern "C" {

__device__ __forceinline__ bool corner(const float *rot, float qx, float qy, float qz, int m, float c,
                                       int *ix, int *iy, int *iz, float *fx, float *fy, float *fz) {
    const float x = rot[0] * qx + rot[1] * qy + rot[2] * qz + c;
    const float y = rot[3] * qx + rot[4] * qy + rot[5] * qz + c;
    const float z = rot[6] * qx + rot[7] * qy + rot[8] * qz + c;
    *ix = (int)floorf(x);
    *iy = (int)floorf(y);
    *iz = (int)floorf(z);
    *fx = x - *ix;
    *fy = y - *iy;
    *fz = z - *iz;
    return !(*ix < 0 || *iy < 0 || *iz < 0 || *ix >= m - 1 || *iy >= m - 1 || *iz >= m - 1);
}

// c_t model_mode[r](R_r q_t): the trilinear view of pixel t in rotation r (outside the grid: 0)
__device__ __forceinline__ float view_at(const float *model_all, int m, const float *rotmats, const int *mode, int r,
                                         const float *q, const float *pixel_factor, int t) {
    const float *model = model_all + (long long)mode[r] * m * m * m;
    const float c = 0.5f * (m - 1);
    int ix, iy, iz;
    float fx, fy, fz, v = 0.0f;
    if (corner(rotmats + 9 * r, q[3 * t], q[3 * t + 1], q[3 * t + 2], m, c, &ix, &iy, &iz, &fx, &fy, &fz)) {
        const long long mm = m, b = ((ix * mm) + iy) * mm + iz;
        const float gx = 1.0f - fx, gy = 1.0f - fy, gz = 1.0f - fz;
        v = gx * (gy * (gz * model[b] + fz * model[b + 1]) + fy * (gz * model[b + mm] + fz * model[b + mm + 1]))
          + fx * (gy * (gz * model[b + mm * mm] + fz * model[b + mm * mm + 1])
                  + fy * (gz * model[b + mm * mm + mm] + fz * model[b + mm * mm + mm + 1]));
    }
    return v * pixel_factor[t];
}

// out[t, r] <- log(max(c_t model_mode[r](R_r q_t), tiny)) (trilinear; outside reads 0); view_sum[r] += the view
// model: V volumes of M^3, mode[r] the one rotation r slices; c = pixel_factor (the detector's corr, or ones)
// grid: x over rotations, y over pixels
__global__ void log_views(const float *model_all, int m, const float *rotmats, const int *mode, int nrot,
                          const float *q, const float *pixel_factor, int npix, float tiny, float *out,
                          double *view_sum) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= nrot || t >= npix) return;
    const float v = view_at(model_all, m, rotmats, mode, r, q, pixel_factor, t);
    atomicAdd(view_sum + r, (double)v);
    out[(long long)t * nrot + r] = logf(fmaxf(v, tiny));
}

// out[t, r] <- c_t model_mode[r](R_r q_t), the views themselves (a background's likelihood and merge need them);
// view_sum[r] += the view.  grid: x over rotations, y over pixels
__global__ void views(const float *model_all, int m, const float *rotmats, const int *mode, int nrot,
                      const float *q, const float *pixel_factor, int npix, float *out, double *view_sum) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= nrot || t >= npix) return;
    const float v = view_at(model_all, m, rotmats, mode, r, q, pixel_factor, t);
    atomicAdd(view_sum + r, (double)v);
    out[(long long)t * nrot + r] = v;
}

// out[d, r] <- log_prior[r] - scale[d] view_sum[r] + sum over frame d's photons of count * log_views[pixel, r]
// frame d's photons: entries frame_ptr[d] .. frame_end[d] of pixel / count; grid: x over rotations, y over frames
__global__ void photon_log_likelihood(const float *log_views, int nrot, const long long *frame_ptr,
                                      const long long *frame_end, const int *pixel, const float *count,
                                      const double *log_prior, const double *scale, const double *view_sum,
                                      int nframes, float *out) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int d = blockIdx.y;
    if (r >= nrot || d >= nframes) return;
    double acc = log_prior[r] - scale[d] * view_sum[r];
    for (long long j = frame_ptr[d]; j < frame_end[d]; ++j)
        acc += (double)count[j] * (double)log_views[(long long)pixel[j] * nrot + r];
    out[(long long)d * nrot + r] = (float)acc;
}

// One block per frame: best <- max_r like[d, r]; prob[d, r] <- exp(beta (like - best)) / norm where
// like > best - window and the result >= prob_min, else 0; norm_out[d] <- the sum before pruning.
__global__ void normalize_probabilities(const float *like, int nrot, const double *beta, double window,
                                        double prob_min, float *prob, double *best_out, double *norm_out) {
    __shared__ double shared[32];
    const int d = blockIdx.x;
    const float *row = like + (long long)d * nrot;
    float *prow = prob + (long long)d * nrot;
    double best = -1e300;
    for (int r = threadIdx.x; r < nrot; r += blockDim.x) best = fmax(best, (double)row[r]);
    for (int o = 16; o > 0; o >>= 1) best = fmax(best, __shfl_down_sync(0xffffffffu, best, o));
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x < 32) {
        best = threadIdx.x < (blockDim.x + 31) / 32 ? shared[threadIdx.x] : -1e300;
        for (int o = 16; o > 0; o >>= 1) best = fmax(best, __shfl_down_sync(0xffffffffu, best, o));
        if (threadIdx.x == 0) shared[0] = best;
    }
    __syncthreads();
    best = shared[0];
    __syncthreads();
    const double b = beta[d], cut = best - window / b;
    double norm = 0.0;
    for (int r = threadIdx.x; r < nrot; r += blockDim.x)
        if (row[r] > cut) norm += exp(b * ((double)row[r] - best));
    for (int o = 16; o > 0; o >>= 1) norm += __shfl_down_sync(0xffffffffu, norm, o);
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = norm;
    __syncthreads();
    if (threadIdx.x < 32) {
        norm = threadIdx.x < (blockDim.x + 31) / 32 ? shared[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) norm += __shfl_down_sync(0xffffffffu, norm, o);
        if (threadIdx.x == 0) shared[0] = norm;
    }
    __syncthreads();
    norm = shared[0];
    for (int r = threadIdx.x; r < nrot; r += blockDim.x) {
        const double p = row[r] > cut ? exp(b * ((double)row[r] - best)) / norm : 0.0;
        prow[r] = p >= prob_min ? (float)p : 0.0f;
    }
    if (threadIdx.x == 0) {
        best_out[d] = best;
        norm_out[d] = norm;
    }
}

// out[t, r] <- sum over frames d with photons in pixel t of count * prob[d, r] (photons by pixel, CSC)
// grid: x over rotations, y over pixels
__global__ void weighted_photons(const float *prob, int nrot, const long long *pixel_ptr, const int *frame,
                                 const float *count, int npix, float *out) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= nrot || t >= npix) return;
    float acc = 0.0f;
    for (long long j = pixel_ptr[t]; j < pixel_ptr[t + 1]; ++j) acc += count[j] * prob[(long long)frame[j] * nrot + r];
    out[(long long)t * nrot + r] = acc;
}

// Trilinear splat: acc[v, 0] += w_corner * views[t, r], acc[v, 1] += w_corner * weight_of_rot[r];
// acc (V, M, M, M, 2) float32, into volume mode[r]; rotations of weight 0 are skipped.
// grid: x over rotations, y over pixels
__global__ void merge_views(float *acc_all, int m, const float *rotmats, const int *mode, int nrot, const float *q,
                            int npix, const float *views, const float *weight_of_rot) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= nrot || t >= npix) return;
    float *acc = acc_all + 2LL * mode[r] * m * m * m;
    const float w = weight_of_rot[r];
    if (w == 0.0f) return;
    const float c = 0.5f * (m - 1);
    int ix, iy, iz;
    float fx, fy, fz;
    if (!corner(rotmats + 9 * r, q[3 * t], q[3 * t + 1], q[3 * t + 2], m, c, &ix, &iy, &iz, &fx, &fy, &fz)) return;
    const float v = views[(long long)t * nrot + r];
    const long long mm = m;
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
            for (int e = 0; e < 2; ++e) {
                const float f = (a ? fx : 1.0f - fx) * (b ? fy : 1.0f - fy) * (e ? fz : 1.0f - fz);
                const long long i = 2 * ((((ix + a) * mm) + iy + b) * mm + iz + e);
                atomicAdd(acc + i, f * v);
                atomicAdd(acc + i + 1, f * w);
            }
}


// ------------------------------------------------------------------ with a known background
// Expected photons of frame d at pixel t in rotation r: s_d V[t, r] + b_d B[t] (V: the views, corr included;
// s = scale, b = background_scale (D,) float64, B = background (T,) float32).

// out[d, r] <- log_prior[r] - scale[d] view_sum[r] + sum over frame d's photons of
//              count * log(max(s_d V[pixel, r] + b_d B[pixel], tiny))       grid: x over rotations, y over frames
__global__ void photon_log_likelihood_bg(const float *views, int nrot, const long long *frame_ptr,
                                         const long long *frame_end, const int *pixel, const float *count,
                                         const double *log_prior, const double *scale,
                                         const double *background_scale, const float *background,
                                         const double *view_sum, int nframes, float tiny, float *out) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int d = blockIdx.y;
    if (r >= nrot || d >= nframes) return;
    const float s = (float)scale[d], b = (float)background_scale[d];
    double acc = log_prior[r] - scale[d] * view_sum[r];
    for (long long j = frame_ptr[d]; j < frame_end[d]; ++j) {
        const int t = pixel[j];
        acc += (double)count[j] * (double)logf(fmaxf(s * views[(long long)t * nrot + r] + b * background[t], tiny));
    }
    out[(long long)d * nrot + r] = (float)acc;
}

// out[t, r] <- sum over frames d with photons in pixel t (photons by pixel, CSC) of
//              count * prob[d, r] * s_d V[t, r] / max(s_d V[t, r] + b_d B[t], tiny): the expected particle share
// grid: x over rotations, y over pixels
__global__ void weighted_photons_bg(const float *prob, int nrot, const long long *pixel_ptr, const int *frame,
                                    const float *count, const float *views, const double *scale,
                                    const double *background_scale, const float *background, int npix, float tiny,
                                    float *out) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= nrot || t >= npix) return;
    const float v = views[(long long)t * nrot + r], bt = background[t];
    float acc = 0.0f;
    for (long long j = pixel_ptr[t]; j < pixel_ptr[t + 1]; ++j) {
        const int d = frame[j];
        const float p = prob[(long long)d * nrot + r];
        if (p == 0.0f) continue;
        const float w = (float)scale[d] * v;
        acc += count[j] * p * w / fmaxf(w + (float)background_scale[d] * bt, tiny);
    }
    out[(long long)t * nrot + r] = acc;
}

// out[d] += sum_r prob[d, r] sum over frame d's photons (entries frame_ptr[d] .. frame_end[d]) of
//           count * s_d V[pixel, r] / max(s_d V[pixel, r] + b_d B[pixel], tiny): the frame's particle photons
// grid: x over rotations, y over frames; a warp's partial sums are added once (double atomicAdd)
__global__ void particle_photons(const float *prob, int nrot, const long long *frame_ptr, const long long *frame_end,
                                 const int *pixel, const float *count, const float *views, const double *scale,
                                 const double *background_scale, const float *background, int nframes, float tiny,
                                 double *out) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int d = blockIdx.y;
    if (d >= nframes) return;      // whole warps leave together: the shuffle below needs every lane
    const float p = r < nrot ? prob[(long long)d * nrot + r] : 0.0f;
    double part = 0.0;
    if (p != 0.0f) {
        const float s = (float)scale[d], b = (float)background_scale[d];
        float acc = 0.0f;
        for (long long j = frame_ptr[d]; j < frame_end[d]; ++j) {
            const int t = pixel[j];
            const float w = s * views[(long long)t * nrot + r];
            acc += count[j] * w / fmaxf(w + b * background[t], tiny);
        }
        part = (double)p * (double)acc;
    }
    for (int o = 16; o > 0; o >>= 1) part += __shfl_down_sync(0xffffffffu, part, o);
    if ((threadIdx.x & 31) == 0 && part != 0.0) atomicAdd(out + d, part);
}

}  // extern "C"
