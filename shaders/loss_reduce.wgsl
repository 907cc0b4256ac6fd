// loss_reduce.wgsl: the two small passes around softmax_xent.wgsl that turn
// per-row losses into the reduced loss of MATH.md section 5.
//
//   normalizer (before the row pass): denom = 1 for none and sum, #valid rows
//     for mean, sum over valid rows of alpha_{y_i} for weighted-mean. Also
//     counts labels that are neither valid nor ignore_index (status[1]), so a
//     device-resident caller can check its labels without a host copy.
//     Traffic: reads N labels (4 bytes each), writes 8 bytes.
//   finalize (after the row pass): loss = (sum_i l_i) / denom, 0 when denom
//     is 0 (mean over no valid rows: 0, not PyTorch's NaN).
//     Traffic: reads N per-row losses, writes 4 bytes.
//
// Workgroup layout: one workgroup of 256 threads for the whole batch. Thread
// t walks rows t, t + 256, ... in a fixed order, then the partials meet in a
// workgroup-memory tree, so the result is the same bits on every run of the
// same adapter (no float atomics). These passes move 4 bytes per row against
// the row pass's 4*C bytes, so one workgroup is enough.

struct Params {
    rows: u32,          // N, the whole batch
    classes: u32,
    ignore_index: i32,
    flags: u32,         // the reduction: 0 none, 1 sum, 2 mean, 3 weighted-mean
    smoothing: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const REDUCTION_MEAN: u32 = 2u;
const REDUCTION_WEIGHTED_MEAN: u32 = 3u;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
// [b_0..b_{C-1}, m_0..m_{C-1}, alpha_0..alpha_{C-1}]
@group(0) @binding(2) var<storage, read> class_params: array<f32>;
@group(0) @binding(3) var<storage, read> row_loss: array<f32>;
// [denom, bad label count (as f32), reduced loss]
@group(0) @binding(4) var<storage, read_write> status: array<f32>;

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;

fn tree_sum(tid: u32) {
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (tid < stride) {
            red_a[tid] += red_a[tid + stride];
            red_b[tid] += red_b[tid + stride];
        }
        // Barrier: one level's sums are written before the next level reads.
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn normalizer(@builtin(local_invocation_index) tid: u32) {
    let n = params.rows;
    let c = params.classes;
    let iters = (n + WG - 1u) / WG;
    var weight = 0.0;
    var bad = 0.0;
    for (var k = 0u; k < iters; k++) {
        let i = k * WG + tid;
        if (i < n) {
            let label = labels[i];
            if (label != params.ignore_index) {
                if (label < 0 || u32(label) >= c) {
                    bad += 1.0;
                } else if (params.flags == REDUCTION_WEIGHTED_MEAN) {
                    weight += class_params[2u * c + u32(label)];
                } else {
                    weight += 1.0;
                }
            }
        }
    }
    red_a[tid] = weight;
    red_b[tid] = bad;
    // Barrier: all partials are stored before the tree reads them.
    workgroupBarrier();
    tree_sum(tid);
    if (tid == 0u) {
        let averaged = params.flags == REDUCTION_MEAN || params.flags == REDUCTION_WEIGHTED_MEAN;
        status[0] = select(1.0, red_a[0], averaged);
        status[1] = red_b[0];
    }
}

@compute @workgroup_size(WG)
fn finalize(@builtin(local_invocation_index) tid: u32) {
    let n = params.rows;
    let iters = (n + WG - 1u) / WG;
    var total = 0.0;
    for (var k = 0u; k < iters; k++) {
        let i = k * WG + tid;
        if (i < n) {
            total += row_loss[i];
        }
    }
    red_a[tid] = total;
    red_b[tid] = 0.0;
    // Barrier: all partials are stored before the tree reads them.
    workgroupBarrier();
    tree_sum(tid);
    if (tid == 0u) {
        let denom = status[0];
        status[2] = select(red_a[0] / denom, 0.0, denom == 0.0);
    }
}
