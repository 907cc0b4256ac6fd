// metrics.wgsl: exact per-class counts for the evaluation metrics of
// docs/MATH.md section 7, and the label histogram that class priors come from.
//
// Math, for each row i with label y_i in [0, C) and each tau t < T:
//   total[y_i]       += 1
//   correct[t][y_i]  += [pred[i][t] == y_i]
// With T = 0 this is the histogram n_c of a labels buffer. Counts are u32
// integer atomics, so the result is exact and independent of order: the GPU
// and the CPU reference agree bit for bit. Accuracy, balanced error, worst-
// class recall and the shot groups follow on the host from these C*(T+1)
// integers.
//
// Memory traffic per row: 4 bytes of label, 4*T bytes of predictions, and
// 1 + (matches) atomic adds into C*(T+1) counters that stay in cache.
//
// Workgroup layout: one thread per row, 64 threads per workgroup; a thread
// loops over its row's T predictions (T <= 64 trips). No barriers: the only
// shared state is the atomic counters. Labels outside [0, C) are counted in
// the last counter (`invalid`) and otherwise skipped; the host refuses them
// before upload, so a device-resident caller can check that word.

struct Params {
    rows: u32,     // rows in this chunk
    classes: u32,  // C
    taus: u32,     // T (0 for a plain histogram)
    _pad0: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> labels: array<i32>;
// pred[row * T + t]
@group(0) @binding(2) var<storage, read_write> pred: array<u32>;
// [total_0..total_{C-1}, correct_{0,0..C-1}, ..., correct_{T-1,..}, invalid]
@group(0) @binding(3) var<storage, read_write> counts: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn class_counts(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= params.rows) {
        return;
    }
    let c_len = params.classes;
    let label = labels[row];
    if (label < 0 || u32(label) >= c_len) {
        atomicAdd(&counts[c_len * (params.taus + 1u)], 1u);
        return;
    }
    let y = u32(label);
    atomicAdd(&counts[y], 1u);
    for (var t = 0u; t < params.taus; t++) {
        if (pred[row * params.taus + t] == y) {
            atomicAdd(&counts[(t + 1u) * c_len + y], 1u);
        }
    }
}
