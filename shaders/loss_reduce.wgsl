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
// t walks rows t, t + 256, ... in a fixed order (four rows per loop trip:
// llvmpipe/lavapipe stop an invocation after about 65,535 loop trips in
// total, so a trip covers 1024 rows and N may reach 64M), then the partials
// meet in a workgroup-memory tree, so the result is the same bits on every
// run of the same adapter (no float atomics). These passes move 4 bytes per
// row against the row pass's 4*C bytes, so one workgroup is enough.
// Barriers: one after the partials are stored, and one per tree level, so a
// level's sums are complete before the next level reads them.

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

// Row i's (weight toward denom, bad label) contribution.
fn row_weight(i: u32) -> vec2<f32> {
    let c = params.classes;
    if (i >= params.rows) {
        return vec2(0.0);
    }
    let label = labels[i];
    if (label == params.ignore_index) {
        return vec2(0.0);
    }
    if (label < 0 || u32(label) >= c) {
        return vec2(0.0, 1.0);
    }
    if (params.flags == REDUCTION_WEIGHTED_MEAN) {
        return vec2(class_params[2u * c + u32(label)], 0.0);
    }
    return vec2(1.0, 0.0);
}

fn row_value(i: u32) -> f32 {
    return select(0.0, row_loss[i], i < params.rows);
}

@compute @workgroup_size(WG)
fn normalizer(@builtin(local_invocation_index) tid: u32) {
    let iters = (params.rows + 4u * WG - 1u) / (4u * WG);
    var acc = vec2(0.0);
    for (var k = 0u; k < iters; k++) {
        let i = k * 4u * WG + tid;
        acc += row_weight(i) + row_weight(i + WG) + row_weight(i + 2u * WG) + row_weight(i + 3u * WG);
    }
    red_a[tid] = acc.x;
    red_b[tid] = acc.y;
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
    let iters = (params.rows + 4u * WG - 1u) / (4u * WG);
    var total = 0.0;
    for (var k = 0u; k < iters; k++) {
        let i = k * 4u * WG + tid;
        total += row_value(i) + row_value(i + WG) + row_value(i + 2u * WG) + row_value(i + 3u * WG);
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
