// loss_reduce.wgsl: the small passes around softmax_xent.wgsl that turn
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
// Each runs in two dispatches. `*_partial`: G workgroups of 256 threads
// (G = groups, at most 256); workgroup g sums the rows
// [g * span, (g + 1) * span) into partials[g] (span a multiple of 4), thread
// t walking the row quads t, t + 256, ... of its span through vec4 views of
// the labels and the losses (labels4, row_loss4: the first 4 * floor(N / 4)
// rows; the last N % 4 rows through the scalar views). A vec4 load costs CPU
// adapters one loop over the SIMD lanes for four rows instead of four.
// llvmpipe/lavapipe stop an invocation after about 65,535 loop trips; a
// thread makes span / 1024 here (16 with the host's span of 16384 rows).
// The span is large because each workgroup's closing tree is costly on CPU
// adapters (about 240,000 instructions for 256 threads on lavapipe). Then
// `normalizer` / `finalize`: a single thread adds the G partials in order.
// G and the span depend on N alone, so the result is the same bits on every
// run of the same adapter (no float atomics); G workgroups rather than one
// keep every core busy on CPU adapters, where one workgroup runs on one core.
// Barriers (partial passes only): one after the partials are stored, and one
// per tree level, so a level's sums are complete before the next level reads
// them.

struct Params {
    rows: u32,          // N, the whole batch
    classes: u32,
    ignore_index: i32,
    flags: u32,         // the reduction: 0 none, 1 sum, 2 mean, 3 weighted-mean
    smoothing: f32,
    groups: u32,        // G, workgroups of the partial passes
    span: u32,          // rows per partial workgroup
    _pad: u32,
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
// G pairs: (weight or loss sum, bad labels) per partial workgroup
@group(0) @binding(5) var<storage, read_write> partials: array<vec2<f32>>;
// The same labels and losses as vec4s: rows 4q .. 4q + 3 at q, for
// q < floor(N / 4) (a 16-byte stand-in when N < 4).
@group(0) @binding(6) var<storage, read> labels4: array<vec4<i32>>;
@group(0) @binding(7) var<storage, read> row_loss4: array<vec4<f32>>;

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

// Row i's (weight toward denom, bad label) contribution; rows past `end`
// contribute nothing.
fn row_weight(i: u32, end: u32) -> vec2<f32> {
    let c = params.classes;
    let label = labels[min(i, params.rows - 1u)];
    let ignored = label == params.ignore_index;
    let bad = !ignored && (label < 0 || u32(label) >= c);
    var w = 1.0;
    if (params.flags == REDUCTION_WEIGHTED_MEAN) {
        w = class_params[2u * c + select(0u, u32(label), !bad && !ignored)];
    }
    let inside = i < end;
    return vec2(select(0.0, w, inside && !ignored && !bad), select(0.0, 1.0, inside && bad));
}

fn row_value(i: u32, end: u32) -> f32 {
    return select(0.0, row_loss[min(i, params.rows - 1u)], i < end);
}

// row_weight for the four rows of quad q, all inside the span.
fn quad_weight(q: u32) -> vec2<f32> {
    let c = params.classes;
    let label = labels4[q];
    let ignored = label == vec4(params.ignore_index);
    let bad = !ignored & ((label < vec4(0)) | (vec4<u32>(label) >= vec4(c)));
    var w = vec4(1.0);
    if (params.flags == REDUCTION_WEIGHTED_MEAN) {
        let y = select(vec4(0u), vec4<u32>(label), !bad & !ignored);
        w = vec4(class_params[2u * c + y.x], class_params[2u * c + y.y],
                 class_params[2u * c + y.z], class_params[2u * c + y.w]);
    }
    let wv = select(vec4(0.0), w, !ignored & !bad);
    let bv = select(vec4(0.0), vec4(1.0), bad);
    return vec2(wv.x + wv.y + wv.z + wv.w, bv.x + bv.y + bv.z + bv.w);
}

// Quads [q0, q1) of span [start, end) go through the vec4 views, the rows
// [tail, end) after them through the scalar ones (at most three, all in the
// last span, since span % 4 == 0).
struct Split {
    q0: u32,
    q1: u32,
    tail: u32,
}

fn split_span(range: vec2<u32>) -> Split {
    let whole = params.rows / 4u;
    var s: Split;
    s.q0 = min(range.x / 4u, whole);
    s.q1 = min(range.y / 4u, whole);
    s.tail = max(range.x, 4u * whole);
    return s;
}

// Sum `value(i)` over this workgroup's span into partials[g] (v.x) and the
// second component (v.y).
fn span_of(g: u32) -> vec2<u32> {
    let start = min(g * params.span, params.rows);
    return vec2(start, min(start + params.span, params.rows));
}

fn store_partial(g: u32, tid: u32, acc: vec2<f32>) {
    red_a[tid] = acc.x;
    red_b[tid] = acc.y;
    // Barrier: all partials are stored before the tree reads them.
    workgroupBarrier();
    tree_sum(tid);
    if (tid == 0u) {
        partials[g] = vec2(red_a[0], red_b[0]);
    }
}

// The G partials, summed in order by a single thread: at most 256 reads,
// and no tree (a 256-thread tree costs a CPU adapter more than the whole
// fold).
fn combine() -> vec2<f32> {
    var total = vec2(0.0);
    for (var g = 0u; g < params.groups; g++) {
        total += partials[g];
    }
    return total;
}

@compute @workgroup_size(WG)
fn normalizer_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let range = span_of(wid.x);
    let sp = split_span(range);
    var acc = vec2(0.0);
    for (var q = sp.q0 + tid; q < sp.q1; q += WG) {
        acc += quad_weight(q);
    }
    if (tid < 3u) {
        acc += row_weight(sp.tail + tid, range.y);
    }
    store_partial(wid.x, tid, acc);
}

@compute @workgroup_size(1)
fn normalizer() {
    let total = combine();
    let averaged = params.flags == REDUCTION_MEAN || params.flags == REDUCTION_WEIGHTED_MEAN;
    status[0] = select(1.0, total.x, averaged);
    status[1] = total.y;
}

@compute @workgroup_size(WG)
fn finalize_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let range = span_of(wid.x);
    let sp = split_span(range);
    var total = 0.0;
    for (var q = sp.q0 + tid; q < sp.q1; q += WG) {
        let l = row_loss4[q];
        total += l.x + l.y + l.z + l.w;
    }
    if (tid < 3u) {
        total += row_value(sp.tail + tid, range.y);
    }
    store_partial(wid.x, tid, vec2(total, 0.0));
}

@compute @workgroup_size(1)
fn finalize() {
    let total = combine();
    let denom = status[0];
    status[2] = select(total.x / denom, 0.0, denom == 0.0);
}
