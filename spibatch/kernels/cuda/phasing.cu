// Phase-retrieval kernels: the CUDA twins of spibatch/kernels/phasing_cpu.py.
//
// One thread per voxel, grid-stride loops, float32 data, complex64 spectra as float2.
// A real iterate has a half spectrum (N, N, N/2 + 1) from a real-to-complex FFT;
// `amplitude` < 0 marks a voxel that is not measured (left free).  Sums (error, norm)
// are accumulated per block in shared memory and added to double accumulators with
// one atomicAdd per block.  Launched through CuPy RawModule (kernels/cuda_cupy.py)
// or PyCUDA SourceModule (kernels/cuda_pycuda.py) from this one source.

extern "C" {

__device__ __forceinline__ double half_weight(long long k, long long n, int half) {
    // how many voxels of the full spectrum the half-spectrum voxel on last-axis index k stands for
    if (!half || k == 0 || 2 * k == n) return 1.0;
    return 2.0;
}

__device__ __forceinline__ void block_add(double value, double *target) {
    __shared__ double partial[32];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    if (warp == 0) {
        value = (lane < (blockDim.x + 31) / 32) ? partial[lane] : 0.0;
        for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
        if (lane == 0) atomicAdd(target, value);
    }
    __syncthreads();
}

// spectrum (size voxels, last axis of length k_len) in place: measured voxels get modulus
// `amplitude`, every voxel is multiplied by `scale`; sums[0] += sum w (|F| - A)^2,
// sums[1] += sum w A^2 over measured voxels (w: half-spectrum weight).
__global__ void modulus_project(float2 *spectrum, const float *amplitude, float scale, long long size,
                                long long k_len, long long n, int half, double *sums) {
    double err = 0.0, norm = 0.0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)blockDim.x * gridDim.x) {
        const float a = amplitude[i];
        float2 f = spectrum[i];
        if (a >= 0.0f) {
            const float m = sqrtf(f.x * f.x + f.y * f.y);
            const double w = half_weight(i % k_len, n, half);
            err += w * (double)(m - a) * (double)(m - a);
            norm += w * (double)a * (double)a;
            if (m > 0.0f) {
                const float r = a / m * scale;
                f.x *= r;
                f.y *= r;
            } else {
                f.x = a * scale;
                f.y = 0.0f;
            }
        } else {
            f.x *= scale;
            f.y *= scale;
        }
        spectrum[i] = f;
    }
    block_add(err, sums);
    block_add(norm, sums + 1);
}

__device__ __forceinline__ bool keep(float value, bool inside, int positivity) {
    return inside && (!positivity || value > 0.0f);
}

// x <- y where kept, else 0 (ER); x - beta y (HIO); beta x + (1 - 2 beta) y with the keep test on 2y - x (RAAR)
__global__ void update_real(float *x, const float *y, const bool *support, int positivity, int algorithm,
                            float beta, long long size) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)blockDim.x * gridDim.x) {
        const float v = y[i], u = x[i];
        if (algorithm == 0) {            // ER
            x[i] = keep(v, support[i], positivity) ? v : 0.0f;
        } else if (algorithm == 1) {     // HIO
            x[i] = keep(v, support[i], positivity) ? v : u - beta * v;
        } else {                         // RAAR
            x[i] = keep(2.0f * v - u, support[i], positivity) ? v : beta * u + (1.0f - 2.0f * beta) * v;
        }
    }
}

// out <- x inside the support (and positive with positivity), 0 elsewhere; out may be x
__global__ void project_support(const float *x, const bool *support, int positivity, float *out, long long size) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)blockDim.x * gridDim.x) {
        const float v = x[i];
        out[i] = keep(v, support[i], positivity) ? v : 0.0f;
    }
}

// out[i, j, k] <- spectrum[i, j, k] * g0[i] g1[j] g2[k] (a separable filter: the shrink-wrap blur)
__global__ void multiply_separable(const float2 *spectrum, float2 *out, const float *g0, const float *g1,
                                   const float *g2, long long n0, long long n1, long long n2) {
    const long long size = n0 * n1 * n2;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)blockDim.x * gridDim.x) {
        const long long k = i % n2, j = (i / n2) % n1, a = i / (n1 * n2);
        const float g = g0[a] * g1[j] * g2[k];
        float2 f = spectrum[i];
        f.x *= g;
        f.y *= g;
        out[i] = f;
    }
}

// support <- volume > level; count[0] += number kept
__global__ void threshold_support(const float *volume, float level, bool *support, long long size,
                                  unsigned long long *count) {
    unsigned long long kept = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)blockDim.x * gridDim.x) {
        const bool k = volume[i] > level;
        support[i] = k;
        kept += k;
    }
    for (int offset = 16; offset > 0; offset >>= 1) kept += __shfl_down_sync(0xffffffffu, kept, offset);
    if ((threadIdx.x & 31u) == 0) atomicAdd(count, kept);
}

}  // extern "C"
