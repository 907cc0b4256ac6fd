// loss_reduce.wgsl: the passes around softmax_xent.wgsl that turn per-row
// losses into the reduced loss of docs/MATH.md section 5.
//
//   normalizer (WHAT = 0, before any gradient): denom = 1 for none and sum,
//     #valid rows for mean, the sum of alpha_{y_i} over valid rows for
//     weighted-mean; and the count of labels that are neither in [0, C) nor
//     the ignore index, so that a device-resident caller can check its
//     labels without a host copy. Reads N labels.
//   loss (WHAT = 1, after the row pass): loss = (sum_i l_i) / denom, 0 when
//     denom is 0 (mean over no valid rows: 0, not PyTorch's NaN). Reads N
//     per-row losses.
//
// Memory traffic: each pass reads N values once (4 or 8 bytes of label, or 4
// of loss, per row) and writes 16 bytes per workgroup plus a few words.
//
// Each runs in two dispatches. reduce_partial: workgroup g of a chunk of
// rows sums the rows [g * span, (g + 1) * span) of the chunk into partial
// slot `slot + g` of `work` (thread t walks rows t, t + WG, ...). Then
// reduce_final: one workgroup adds all slots, thread t slots t, t + WG, ...,
// and meets them in a tree. The spans and slots depend on N alone and no
// float atomics are used, so the same input gives the same bits on the same
// adapter. Barriers: one per tree level (a level's writes complete before
// the next reads them), one after the first writes.

struct Params {
    rows: u32,          // rows bound in this chunk
    classes: u32,
    reduction: u32,     // 0 none, 1 sum, 2 mean, 3 weighted-mean
    flags: u32,         // FLAG_* below
    ignore_lo: i32,     // ignore_index, low and high words
    ignore_hi: i32,
    span: u32,          // reduce_partial: rows per workgroup
    slot: u32,          // reduce_partial: this chunk's first slot; reduce_final: slots in all
}

const FLAG_LOSS_OUT: u32 = 1u;   // write the loss into loss_out[0]
const FLAG_BAD_OUT: u32 = 2u;    // write the bad-label count into bad_out[0]

const REDUCTION_MEAN: u32 = 2u;
const REDUCTION_WEIGHTED_MEAN: u32 = 3u;

// Words of `work`: denom, bad labels, the reduced loss, then 4 per slot.
const WORK_DENOM: u32 = 0u;
const WORK_BAD: u32 = 1u;
const WORK_LOSS: u32 = 2u;
const WORK_SLOTS: u32 = 4u;

override WG: u32 = 256u;
override WHAT: u32 = 0u;          // 0 normalizer, 1 loss
override LABEL_KIND: u32 = 0u;    // 0 i32, 1 u32, 2 i64

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> labels: array<i32>;
@group(0) @binding(2) var<storage, read> class_vecs: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> bad_out: array<u32>;

var<workgroup> tree: array<vec4<f32>, WG>;

// (valid, alpha_y if valid, bad) for one row.
fn label_terms(row: u32) -> vec3<f32> {
    var ignored: bool;
    var in_range: bool;
    var y: i32;
    if (LABEL_KIND == 2u) {
        y = labels[2u * row];
        let hi = labels[2u * row + 1u];
        ignored = y == params.ignore_lo && hi == params.ignore_hi;
        in_range = hi == 0 && y >= 0 && u32(y) < params.classes;
    } else if (LABEL_KIND == 1u) {
        y = labels[row];
        ignored = y == params.ignore_lo && params.ignore_hi == 0 && params.ignore_lo >= 0;
        in_range = u32(y) < params.classes;
    } else {
        y = labels[row];
        ignored = y == params.ignore_lo && params.ignore_hi == (y >> 31u);
        in_range = y >= 0 && u32(y) < params.classes;
    }
    let valid = !ignored && in_range;
    let alpha = class_vecs[2u * params.classes + select(0u, u32(y), valid)];
    return vec3<f32>(select(0.0, 1.0, valid), select(0.0, alpha, valid), select(0.0, 1.0, !ignored && !in_range));
}

fn tree_sum(lid: u32, mine: vec4<f32>) -> vec4<f32> {
    tree[lid] = mine;
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lid < half) {
            tree[lid] += tree[lid + half];
        }
    }
    workgroupBarrier();
    return tree[0];
}

@compute @workgroup_size(WG)
fn reduce_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let first = wid.x * params.span;
    let last = min(first + params.span, params.rows);
    var sum = vec4<f32>(0.0);
    for (var row = first + lid; row < last; row += WG) {
        if (WHAT == 0u) {
            sum += vec4<f32>(label_terms(row), 0.0);
        } else {
            sum.x += row_loss[row];
        }
    }
    let total = tree_sum(lid, sum);
    if (lid == 0u) {
        let at = WORK_SLOTS + 4u * (params.slot + wid.x);
        work[at] = total.x;
        work[at + 1u] = total.y;
        work[at + 2u] = total.z;
        work[at + 3u] = total.w;
    }
}

@compute @workgroup_size(WG)
fn reduce_final(@builtin(local_invocation_index) lid: u32) {
    var sum = vec4<f32>(0.0);
    for (var k = lid; k < params.slot; k += WG) {
        let at = WORK_SLOTS + 4u * k;
        sum += vec4<f32>(work[at], work[at + 1u], work[at + 2u], work[at + 3u]);
    }
    let total = tree_sum(lid, sum);
    if (lid != 0u) {
        return;
    }
    if (WHAT == 0u) {
        var denom = 1.0;
        if (params.reduction == REDUCTION_MEAN) {
            denom = total.x;
        } else if (params.reduction == REDUCTION_WEIGHTED_MEAN) {
            denom = total.y;
        }
        work[WORK_DENOM] = denom;
        work[WORK_BAD] = total.z;
        if ((params.flags & FLAG_BAD_OUT) != 0u) {
            bad_out[0] = u32(total.z);
        }
    } else {
        let denom = work[WORK_DENOM];
        let loss = select(total.x / denom, 0.0, denom == 0.0);
        work[WORK_LOSS] = loss;
        if ((params.flags & FLAG_LOSS_OUT) != 0u) {
            loss_out[0] = loss;
        }
    }
}
