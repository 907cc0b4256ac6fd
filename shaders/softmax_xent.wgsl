// softmax_xent.wgsl: the per-class logit-adjusted softmax cross-entropy,
// forward alone or fused with its backward (MATH.md sections 1-4).
//
// Math, per row i with label y (ignored when y == ignore_index):
//   z_c  = f_c + b_c - m_y * [c == y]
//   LSE  = M + log(S),  M = max_c z_c,  S = sum_c exp(z_c - M)   (online softmax)
//   l_i  = alpha_y * ((1 - eps) * (LSE - z_y) + eps * (LSE - mean_c z_c))
//   dl/df_c = scale_i * alpha_y * (exp(z_c - M) / S - q_c),
//   q_c  = (1 - eps) * [c == y] + eps / C,   scale_i = g_i / denom
// where `denom` (1, #valid rows or sum of valid alpha) comes from the
// `normalizer` pass of loss_reduce.wgsl and g_i is the upstream gradient.
//
// Memory traffic per logit element: forward reads 4 bytes. Forward+backward
// writes 4 bytes of gradient and reads 4 bytes (xent_row_cached: the row stays
// in registers) or 8 bytes (the other layouts: pass 1 online max/sum, pass 2
// re-reads the row to form p). Per row: 4 bytes of label, 4 bytes of loss,
// plus one read of b[y], m[y], alpha[y]; b is read once per element but is
// only C floats, so it stays in cache across rows.
//
// Four workgroup layouts, picked by the host from C, the adapter and its
// tuning cache (src/tuning.rs):
//   xent_row_cached     - one workgroup of WG_SIZE threads per row, the row
//                         held in registers (CACHE floats per thread, four
//                         consecutive per trip): one read, then max, one exp
//                         per element, the sum, and the gradient from the
//                         cached exps. For C <= WG_SIZE * CACHE.
//   xent_row_per_group  - one workgroup of WG_SIZE threads per row; thread t
//                         visits classes t, t + WG_SIZE, ...; the partial
//                         (max, sum, sum of z) triples meet in a workgroup-
//                         memory tree. For C >= ~64.
//   xent_row_per_thread - one thread per row, classes visited in order; no
//                         barriers at all. For small C, where a workgroup per
//                         row would leave most threads idle. The host allows
//                         it up to C = 4096 only: llvmpipe/lavapipe stop an
//                         invocation after about 65,535 loop trips in total,
//                         and this layout makes 2*C trips per thread.
//   xent_row_segments   - each row split into P contiguous segments of at most
//                         512 classes (P = seg_threads, a power of two), one
//                         thread each, held in a private array: one read, one
//                         write; WG / P rows per workgroup. b comes from the
//                         uniform bias tables (C <= 32768) or from
//                         class_params (the _wide entries). P = 1 is a row
//                         per thread: no barriers. P > 1 meets the P partials
//                         in a workgroup-memory tree (log2 P barriers per
//                         reduction, each after a level's writes). The
//                         fastest layout on CPU adapters, where a thread is a
//                         SIMD lane: contiguous per-thread streams, b read as
//                         a broadcast or a vector gather, no per-element
//                         branch. The gradient's destination (separate or in
//                         place) is fixed per entry point, since lavapipe
//                         pays for both sides of any branch. Its vec4 entries
//                         read and write whole vec4s: xent_row_segments4*
//                         for C % 4 == 0, xent_row_segments4s* for other C
//                         (rows start inside a vec4: a thread takes whole
//                         vec4s of the buffer, b is shifted to match, and
//                         the two vec4s a row shares with its neighbours are
//                         stored component by component).
// A fifth, split-row (a row cut across workgroups, for huge C and few rows),
// lives in softmax_xent_split.wgsl, which the host appends to this file.
// Loops run a workgroup-uniform trip count, so every barrier sits in uniform
// control flow (Tint's and naga's uniformity analyses both accept it); in
// xent_row_segments the per-thread trip counts differ but hold no barrier.
//
// Infinities are never produced on purpose: the running max starts at the
// lowest finite f32, so exp() only ever sees arguments <= 0.

struct Params {
    rows: u32,          // rows in this chunk
    classes: u32,       // C
    ignore_index: i32,
    flags: u32,         // FLAG_* below
    smoothing: f32,     // eps in [0, 1)
    seg_threads: u32,   // xent_row_segments: threads per row P (a power of two)
    seg_len: u32,       // xent_row_segments: classes per thread L (a multiple of 4)
    _pad: u32,
}

const FLAG_WRITE_GRAD: u32 = 1u;        // forward+backward, else forward only
const FLAG_IN_PLACE: u32 = 2u;          // gradient overwrites the logits
const FLAG_UPSTREAM_PER_ROW: u32 = 4u;  // upstream holds g_i per row, else one g
const FLAG_UPSTREAM_ONE: u32 = 8u;      // g = 1: upstream is not read
const FLAG_TABLE_MARGINS: u32 = 16u;    // the bias tables also hold m at C.., alpha at 2C..

const LOWEST: f32 = -3.4028235e38;
const MAX_WG: u32 = 1024u;
const CACHE4: u32 = 16u;
const SEG_CACHE4: u32 = 128u;  // vec4s of its segment each thread of xent_row_segments holds
const TABLE_HALF: u32 = 16384u;  // classes per uniform b table (64 KiB)

override WG_SIZE: u32 = 64u;   // power of two, <= MAX_WG

@group(0) @binding(0) var<uniform> params: Params;
// read_write so that the in-place mode can share one layout with the
// separate-gradient mode; the forward never writes it.
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
// [b_0..b_{C-1}, m_0..m_{C-1}, alpha_0..alpha_{C-1}]
@group(0) @binding(3) var<storage, read> class_params: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(6) var<storage, read> upstream: array<f32>;
// [denom] written by loss_reduce.wgsl's normalizer
@group(0) @binding(7) var<storage, read> norm: array<f32>;
// b_0..b_{C-1} again, zero-padded, in two 64 KiB uniform tables (classes
// below 16384, then 16384..32767), for xent_row_segments when C <= 32768:
// on lavapipe a uniform-buffer read is a vector gather (a scalar broadcast
// at a constant index), a storage read a per-lane loop.
@group(0) @binding(8) var<uniform> bias_table: array<vec4<f32>, 4096>;
@group(0) @binding(9) var<uniform> bias_table_hi: array<vec4<f32>, 4096>;
// The logits and the gradient as vec4s, for the vec4 entries
// (xent_row_segments4*, xent_row_segments4s*, xent_rows_unrolled4*, the
// split-row *4 entries), which use these instead of bindings 1 and 4 (the
// host binds stand-ins there, and here for every other entry): on lavapipe
// a vec4 load or store pays the per-lane loop once for four floats.
@group(0) @binding(10) var<storage, read_write> logits4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> grad4: array<vec4<f32>>;

var<workgroup> wg_label: i32;
var<workgroup> red_max: array<f32, MAX_WG>;
var<workgroup> red_sum: array<f32, MAX_WG>;
var<workgroup> red_zsum: array<f32, MAX_WG>;

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// What a row needs to know about its label.
struct Target {
    y: u32,
    margin: f32,   // m_y
    alpha: f32,    // alpha_y
    ignored: bool,
    bad: bool,     // out of range and not ignored: loud NaN, counted by the normalizer
}

fn target_of(label: i32) -> Target {
    let c = params.classes;
    var t: Target;
    t.ignored = label == params.ignore_index;
    t.bad = !t.ignored && (label < 0 || u32(label) >= c);
    t.y = select(0u, u32(label), !t.ignored && !t.bad);
    t.margin = class_params[c + t.y];
    t.alpha = class_params[2u * c + t.y];
    return t;
}

fn adjusted(base: u32, c: u32, t: Target) -> f32 {
    return logits[base + c] + class_params[c] - select(0.0, t.margin, c == t.y);
}

// Merge two online-softmax partials (max, sum of exp relative to max).
fn merge_sum(m_a: f32, s_a: f32, m_b: f32, s_b: f32) -> f32 {
    let m = max(m_a, m_b);
    return s_a * exp(m_a - m) + s_b * exp(m_b - m);
}

fn row_loss_of(t: Target, lse: f32, z_y: f32, z_sum: f32) -> f32 {
    let eps = params.smoothing;
    let mean_z = z_sum / f32(params.classes);
    return t.alpha * ((1.0 - eps) * (lse - z_y) + eps * (lse - mean_z));
}

fn grad_scale(row: u32, t: Target) -> f32 {
    let denom = norm[0];
    var g = 1.0;
    if ((params.flags & FLAG_UPSTREAM_ONE) == 0u) {
        g = select(upstream[0], upstream[row], (params.flags & FLAG_UPSTREAM_PER_ROW) != 0u);
    }
    return select(t.alpha * g / denom, 0.0, t.ignored || denom == 0.0);
}

fn store_grad(index: u32, value: f32) {
    if ((params.flags & FLAG_IN_PLACE) != 0u) {
        logits[index] = value;
    } else {
        grad[index] = value;
    }
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_per_group(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.x;   // the host dispatches exactly `rows` workgroups
    let c_len = params.classes;
    let base = row * c_len;
    if (tid == 0u) {
        wg_label = labels[row];
    }
    // Uniform load: every thread sees the same label, so the branches on it
    // below keep the barriers in uniform control flow.
    let t = target_of(workgroupUniformLoad(&wg_label));
    let iters = (c_len + WG_SIZE - 1u) / WG_SIZE;

    // Pass 1: online max / sum of exp / sum of z over this thread's classes.
    var m = LOWEST;
    var s = 0.0;
    var z_sum = 0.0;
    if (!t.ignored) {
        for (var k = 0u; k < iters; k++) {
            let c = k * WG_SIZE + tid;
            if (c < c_len) {
                let z = adjusted(base, c, t);
                let m_new = max(m, z);
                s = s * exp(m - m_new) + exp(z - m_new);
                m = m_new;
                z_sum += z;
            }
        }
    }
    red_max[tid] = m;
    red_sum[tid] = s;
    red_zsum[tid] = z_sum;
    // Barrier: every partial is in workgroup memory before the tree reads it.
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if (tid < stride) {
            let m_a = red_max[tid];
            let m_b = red_max[tid + stride];
            red_sum[tid] = merge_sum(m_a, red_sum[tid], m_b, red_sum[tid + stride]);
            red_max[tid] = max(m_a, m_b);
            red_zsum[tid] += red_zsum[tid + stride];
        }
        // Barrier: level k's writes are complete before level k+1 reads them.
        workgroupBarrier();
    }
    let m_row = red_max[0];
    let s_row = red_sum[0];

    if (t.ignored) {
        if (tid == 0u) {
            row_loss[row] = 0.0;
        }
    } else if (t.bad) {
        if (tid == 0u) {
            row_loss[row] = nan();
        }
    } else if (tid == 0u) {
        let z_y = adjusted(base, t.y, t);
        row_loss[row] = row_loss_of(t, m_row + log(s_row), z_y, red_zsum[0]);
    }

    if ((params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    // Pass 2: re-read the row, write p - q scaled. Ignored rows write zeros
    // without reading; rows with a bad label write NaN.
    let scale = grad_scale(row, t);
    let inv_s = 1.0 / s_row;
    let q_other = params.smoothing / f32(c_len);
    let q_true = 1.0 - params.smoothing + q_other;
    for (var k = 0u; k < iters; k++) {
        let c = k * WG_SIZE + tid;
        if (c < c_len) {
            var value = 0.0;
            if (t.bad) {
                value = nan();
            } else if (!t.ignored) {
                let p = exp(adjusted(base, c, t) - m_row) * inv_s;
                value = scale * (p - select(q_other, q_true, c == t.y));
            }
            store_grad(base + c, value);
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_per_thread(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.x * WG_SIZE + tid;
    if (row >= params.rows) {
        return;
    }
    let c_len = params.classes;
    let base = row * c_len;
    let t = target_of(labels[row]);
    if (t.ignored || t.bad) {
        row_loss[row] = select(0.0, nan(), t.bad);
        if ((params.flags & FLAG_WRITE_GRAD) != 0u) {
            for (var c = 0u; c < c_len; c++) {
                store_grad(base + c, select(0.0, nan(), t.bad));
            }
        }
        return;
    }

    var m = LOWEST;
    var s = 0.0;
    var z_sum = 0.0;
    for (var c = 0u; c < c_len; c++) {
        let z = adjusted(base, c, t);
        let m_new = max(m, z);
        s = s * exp(m - m_new) + exp(z - m_new);
        m = m_new;
        z_sum += z;
    }
    let z_y = adjusted(base, t.y, t);
    row_loss[row] = row_loss_of(t, m + log(s), z_y, z_sum);

    if ((params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    let scale = grad_scale(row, t);
    let inv_s = 1.0 / s;
    let q_other = params.smoothing / f32(c_len);
    let q_true = 1.0 - params.smoothing + q_other;
    for (var c = 0u; c < c_len; c++) {
        let p = exp(adjusted(base, c, t) - m) * inv_s;
        store_grad(base + c, scale * (p - select(q_other, q_true, c == t.y)));
    }
}

// BEGIN row-cached reductions (the subgroup module replaces this block
// with softmax_xent_subgroup.wgsl)
// (max, sum of z) across the workgroup in a tree; every thread gets both.
// (A flat fold, one barrier and every thread reading all partials, measured
// 2.7x slower on lavapipe at C = 1000: the reads cost more than the barriers.)
fn reduce_max_zsum(tid: u32, m: f32, z_sum: f32) -> vec2<f32> {
    return tree_max_zsum(tid, tid, 0u, WG_SIZE, m, z_sum);
}

fn reduce_sum(tid: u32, s: f32) -> f32 {
    return tree_sum(tid, tid, 0u, WG_SIZE, s);
}
// END row-cached reductions

@compute @workgroup_size(WG_SIZE)
fn xent_row_cached(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.x;   // the host dispatches exactly `rows` workgroups
    let c_len = params.classes;
    let base = row * c_len;
    if (tid == 0u) {
        wg_label = labels[row];
    }
    let t = target_of(workgroupUniformLoad(&wg_label));
    // Thread tid holds classes (k * WG_SIZE + tid) * 4 + j, j < 4: each trip
    // reads 16 contiguous bytes, and a workgroup's trip a contiguous span.
    let iters = (c_len + 4u * WG_SIZE - 1u) / (4u * WG_SIZE);
    var cache: array<vec4<f32>, CACHE4>;
    var m = LOWEST;
    var z_sum = 0.0;
    for (var k = 0u; k < iters; k++) {
        let c0 = (k * WG_SIZE + tid) * 4u;
        var v = vec4(LOWEST);
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + j;
            if (c < c_len && !t.ignored) {
                let z = adjusted(base, c, t);
                v[j] = z;
                z_sum += z;
            }
        }
        cache[k] = v;
        m = max(m, max(max(v.x, v.y), max(v.z, v.w)));
    }
    let mz = reduce_max_zsum(tid, m, z_sum);
    let m_row = mz.x;
    // exp(z - M) once per element, kept for the gradient.
    var s = 0.0;
    for (var k = 0u; k < iters; k++) {
        let e = exp(cache[k] - vec4(m_row));
        cache[k] = e;
        s += e.x + e.y + e.z + e.w;
    }
    let s_row = reduce_sum(tid, s);

    if (tid == 0u) {
        var l = 0.0;
        if (t.bad) {
            l = nan();
        } else if (!t.ignored) {
            l = row_loss_of(t, m_row + log(s_row), adjusted(base, t.y, t), mz.y);
        }
        row_loss[row] = l;
    }
    if ((params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    let scale = grad_scale(row, t);
    let inv_s = 1.0 / s_row;
    let q_other = params.smoothing / f32(c_len);
    let q_true = 1.0 - params.smoothing + q_other;
    for (var k = 0u; k < iters; k++) {
        let c0 = (k * WG_SIZE + tid) * 4u;
        let e = cache[k];
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + j;
            if (c < c_len) {
                var value = 0.0;
                if (t.bad) {
                    value = nan();
                } else if (!t.ignored) {
                    value = scale * (e[j] * inv_s - select(q_other, q_true, c == t.y));
                }
                store_grad(base + c, value);
            }
        }
    }
}

// Float i of the two bias tables taken as one array.
fn table_at(i: u32) -> f32 {
    if (i < TABLE_HALF) {
        return bias_table[i / 4u][i % 4u];
    }
    return bias_table_hi[(i - TABLE_HALF) / 4u][(i - TABLE_HALF) % 4u];
}

// target_of with m_y and alpha_y from the uniform tables when they hold
// them (3C <= 32768): two storage reads fewer per row, which counts when
// rows are short.
fn target_from_table(label: i32, table: bool) -> Target {
    if (!table || (params.flags & FLAG_TABLE_MARGINS) == 0u) {
        return target_of(label);
    }
    let c = params.classes;
    var t: Target;
    t.ignored = label == params.ignore_index;
    t.bad = !t.ignored && (label < 0 || u32(label) >= c);
    t.y = select(0u, u32(label), !t.ignored && !t.bad);
    t.margin = table_at(c + t.y);
    t.alpha = table_at(2u * c + t.y);
    return t;
}

// b_c .. b_{c+3} for a vec4 starting at class c (c % 4 == 0).
// Where b comes from in row_segments, fixed per entry point: the storage
// class_params (C > 32768), the low uniform table alone (C <= 16384), or
// either table (C <= 32768). The B_EITHER entries read through B_LOW in one
// loop and B_HIGH in a second (a branch per vec4 would run both sides on
// lavapipe); B_EITHER itself, with its branch, serves single reads.
const B_STORAGE: u32 = 0u;
const B_LOW: u32 = 1u;
const B_HIGH: u32 = 2u;  // the high table alone (c >= 16384), within B_EITHER entries
const B_EITHER: u32 = 3u;

fn bias4(c: u32, src: u32) -> vec4<f32> {
    if (src == B_LOW) {
        return bias_table[c / 4u];
    }
    if (src == B_HIGH) {
        return bias_table_hi[(c - TABLE_HALF) / 4u];
    }
    if (src == B_EITHER) {
        // c % 4 == 0, so a vec4 never straddles the two tables.
        if (c < TABLE_HALF) {
            return bias_table[c / 4u];
        }
        return bias_table_hi[(c - TABLE_HALF) / 4u];
    }
    let last = params.classes - 1u;
    return vec4(class_params[min(c, last)], class_params[min(c + 1u, last)],
                class_params[min(c + 2u, last)], class_params[min(c + 3u, last)]);
}


// Trees over groups of `width` threads (a power of two, the same for every
// thread of the workgroup): lane `lane` of the group whose partials start
// at `first`. The whole workgroup (row-cached, split-row) or the P =
// seg_threads threads of each row (row-segments). Every thread runs the
// same trip count, so the barriers are in uniform control flow.
fn tree_max_zsum(tid: u32, lane: u32, first: u32, width: u32, m: f32, z_sum: f32) -> vec2<f32> {
    red_max[tid] = m;
    red_zsum[tid] = z_sum;
    // Barrier: every partial is stored before the tree reads it.
    workgroupBarrier();
    for (var stride = width / 2u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            red_max[tid] = max(red_max[tid], red_max[tid + stride]);
            red_zsum[tid] += red_zsum[tid + stride];
        }
        // Barrier: one level's results are complete before the next reads them.
        workgroupBarrier();
    }
    return vec2(red_max[first], red_zsum[first]);
}

fn tree_sum(tid: u32, lane: u32, first: u32, width: u32, s: f32) -> f32 {
    red_sum[tid] = s;
    // Barrier: every partial is stored before the tree reads it.
    workgroupBarrier();
    for (var stride = width / 2u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            red_sum[tid] += red_sum[tid + stride];
        }
        // Barrier: one level's sums are complete before the next reads them.
        workgroupBarrier();
    }
    return red_sum[first];
}

// How row_segments reaches the logits and the gradient, fixed per entry
// point: scalar views (bindings 1, 4), or vec4 views (10, 11) with rows
// of whole vec4s (C % 4 == 0), or vec4 views with rows that start
// anywhere in a vec4 (C % 4 != 0, every chunk's N * C % 4 == 0).
const VIEW_SCALAR: u32 = 0u;
const VIEW_VEC4: u32 = 1u;
const VIEW_SHIFTED: u32 = 2u;

// hi shifted up by s components, lo's last s components below it:
// components s..3 are hi.x.., components 0..s-1 are lo's top s.
fn shift_in(lo: vec4<f32>, hi: vec4<f32>, s: u32) -> vec4<f32> {
    var v = hi;
    v = select(v, vec4(lo.w, hi.x, hi.y, hi.z), s == 1u);
    v = select(v, vec4(lo.z, lo.w, hi.x, hi.y), s == 2u);
    return select(v, vec4(lo.y, lo.z, lo.w, hi.x), s == 3u);
}

// A row-segments thread's place: its row's first element `base`, its
// classes [c0, c1) (VIEW_SHIFTED: its vec4s from u0, the row's first vec4
// q0, the row's offset s in it), the last class `last` a clamped scalar
// load may touch, and the last table vec4 `k_last`.
struct Segment {
    base: u32,
    c0: u32,
    c1: u32,
    u0: u32,
    q0: u32,
    s: u32,
    last: u32,
    k_last: u32,
}

// Pass 1's running values: max, sum of z and z_y per component, and the
// previous table vec4 (VIEW_SHIFTED builds b from two).
struct SegmentFold {
    m4: vec4<f32>,
    zs4: vec4<f32>,
    zy4: vec4<f32>,
    b_lo: vec4<f32>,
}

// Trip k of pass 1: the four adjusted logits z, masked to LOWEST past the
// segment, folded into `acc`; the caller caches them.
fn segment_z(sg: Segment, k: u32, t: Target, src: u32, view: u32, acc: ptr<function, SegmentFold>) -> vec4<f32> {
    let c = sg.c0 + 4u * k;
    let cs = vec4(c, c + 1u, c + 2u, c + 3u);
    let inside = cs < vec4(sg.c1);
    // Clamped loads: past the segment's end re-read its last element,
    // masked to LOWEST below, so there is no branch per element.
    var x: vec4<f32>;
    var b: vec4<f32>;
    if (view == VIEW_VEC4) {
        // C % 4 == 0: the segment is whole vec4s.
        x = logits4[(sg.base + c) / 4u];
        b = bias4(c, src);
    } else if (view == VIEW_SHIFTED) {
        x = logits4[sg.u0 + k];
        let b_hi = bias4(4u * min(sg.u0 + k - sg.q0, sg.k_last), src);
        b = shift_in((*acc).b_lo, b_hi, sg.s);
        (*acc).b_lo = b_hi;
    } else {
        let last = sg.last;
        x = vec4(logits[sg.base + min(cs.x, last)], logits[sg.base + min(cs.y, last)],
                 logits[sg.base + min(cs.z, last)], logits[sg.base + min(cs.w, last)]);
        b = bias4(c, src);
    }
    let z = x + b - select(vec4(0.0), vec4(t.margin), cs == vec4(t.y));
    let zm = select(vec4(LOWEST), z, inside);
    (*acc).m4 = max((*acc).m4, zm);
    (*acc).zs4 += select(vec4(0.0), z, inside);
    // z_y, kept on the way (P = 1) rather than read again for the loss.
    (*acc).zy4 += select(vec4(0.0), z, inside & (cs == vec4(t.y)));
    return zm;
}

fn row_segments(wid: u32, tid: u32, src: u32, in_place: bool, view: u32) {
    let table = src != B_STORAGE;
    let p = params.seg_threads;
    let lane = tid % p;
    let first = tid - lane;
    let row_unclamped = wid * (WG_SIZE / p) + tid / p;
    let valid = row_unclamped < params.rows;
    let row = min(row_unclamped, params.rows - 1u);
    let c_len = params.classes;
    let base = row * c_len;
    let t = target_from_table(labels[row], table);
    // This thread's segment [c0, c1): contiguous, so each thread walks its
    // own stretch of memory and b_c is read as one vec4 per four classes.
    var c0 = min(lane * params.seg_len, c_len);
    var c1 = min(c0 + params.seg_len, c_len);
    var trips = (c1 - c0 + 3u) / 4u;
    // VIEW_SHIFTED: the segment is instead vec4s [u0, u0 + trips) of the
    // buffer, of the q_end - q0 vec4s that hold a piece of the row; vec4 u
    // holds classes 4u - base .. 4u - base + 3 (wrapping below 0, so the
    // `< c_len` test rejects the previous row's), and its b is the table
    // vec4s k - 1 and k (k = u - q0) shifted by s = base % 4.
    let s = base % 4u;
    let q0 = base / 4u;
    var u0 = 0u;
    if (view == VIEW_SHIFTED) {
        let q_end = (base + c_len + 3u) / 4u;
        u0 = min(q0 + lane * (params.seg_len / 4u), q_end);
        trips = min(u0 + params.seg_len / 4u, q_end) - u0;
        c0 = 4u * u0 - base;  // the class of u0's .x, maybe "negative"
        c1 = c_len;
    }
    // The table vec4s past b's last (C + 3 classes span one more vec4 than
    // C) are clamped to the table: their classes are masked anyway.
    let k_last = select(4095u, 8191u, src == B_EITHER);
    var b_lo = vec4(0.0);
    if (view == VIEW_SHIFTED) {
        b_lo = bias4(4u * min(max(u0 - q0, 1u) - 1u, k_last), src);
    }
    let sg = Segment(base, c0, c1, u0, q0, s, max(c1, 1u) - 1u, k_last);
    var cache: array<vec4<f32>, SEG_CACHE4>;
    var acc = SegmentFold(vec4(LOWEST), vec4(0.0), vec4(0.0), b_lo);
    // With both tables: the trips in the low table, then a second loop for
    // those in the high one, each reading its own table, instead of a
    // branch per vec4 (whose two sides lavapipe would both run). A thread
    // whose segment lies in one table leaves the other loop at once.
    var k_split = trips;
    if (src == B_EITHER) {
        let k0 = select(c0 / 4u, u0 - q0, view == VIEW_SHIFTED);  // trip 0's table vec4
        k_split = min(trips, max(k0, 4096u) - k0);
    }
    let src_lo = select(src, B_LOW, src == B_EITHER);
    for (var k = 0u; k < k_split; k++) {
        cache[k] = segment_z(sg, k, t, src_lo, view, &acc);
    }
    if (src == B_EITHER) {
        for (var k = k_split; k < trips; k++) {
            cache[k] = segment_z(sg, k, t, B_HIGH, view, &acc);
        }
    }
    let m4 = acc.m4;
    let zs4 = acc.zs4;
    let zy4 = acc.zy4;
    var m = max(max(m4.x, m4.y), max(m4.z, m4.w));
    var z_sum = zs4.x + zs4.y + zs4.z + zs4.w;
    if (p > 1u) {
        let mz = tree_max_zsum(tid, lane, first, p, m, z_sum);
        m = mz.x;
        z_sum = mz.y;
    }
    var s4 = vec4(0.0);
    for (var k = 0u; k < trips; k++) {
        let e = exp(cache[k] - vec4(m));
        cache[k] = e;
        s4 += e;
    }
    var s_row = s4.x + s4.y + s4.z + s4.w;
    if (p > 1u) {
        s_row = tree_sum(tid, lane, first, p, s_row);
    }
    if (!valid) {
        return;
    }
    if (lane == 0u) {
        var l = 0.0;
        if (t.bad) {
            l = nan();
        } else if (!t.ignored) {
            var z_y = zy4.x + zy4.y + zy4.z + zy4.w;
            if (p > 1u) {
                // y may lie in another thread's segment. (The vec4 entries
                // have only the vec4 view of the logits bound.)
                var x_y = 0.0;
                if (view == VIEW_SCALAR) {
                    x_y = logits[base + t.y];
                } else {
                    x_y = logits4[(base + t.y) / 4u][(base + t.y) % 4u];
                }
                z_y = x_y + class_params[t.y] - t.margin;
            }
            l = row_loss_of(t, m + log(s_row), z_y, z_sum);
        }
        row_loss[row] = l;
    }
    if ((params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    let scale = grad_scale(row, t);
    let inv_s = 1.0 / s_row;
    let fill = select(0.0, nan(), t.bad);
    let dead = t.bad || t.ignored;
    // The destination is a compile-time choice (one entry point each):
    // lavapipe runs both sides of a branch under a mask, and even a branch
    // around the whole loop measured 25% slower at C = 1000.
    if (view == VIEW_VEC4) {
        for (var k = 0u; k < trips; k++) {
            let c = c0 + 4u * k;
            let g = segment_grad(cache[k], c, t, scale, inv_s, fill, dead);
            store4(in_place, (base + c) / 4u, g);
        }
    } else if (view == VIEW_SHIFTED) {
        // Whole vec4 stores for the vec4s all inside the row,
        // [(base + 3) / 4, (base + C) / 4); the row's first and last vec4
        // (when it shares them with the rows beside it) get their
        // components one by one, out of the loop, so the loop has no branch.
        let k_lo = clamp((base + 3u) / 4u, u0, u0 + trips) - u0;
        let k_hi = clamp((base + c_len) / 4u, u0, u0 + trips) - u0;
        for (var k = k_lo; k < k_hi; k++) {
            let c = c0 + 4u * k;
            let g = segment_grad(cache[k], c, t, scale, inv_s, fill, dead);
            store4(in_place, u0 + k, g);
        }
        if (k_lo > 0u) {
            // k_lo == 1: this thread holds the row's first vec4 (s != 0).
            let g = segment_grad(cache[0], c0, t, scale, inv_s, fill, dead);
            store_part4(in_place, u0, g, vec4(c0, c0 + 1u, c0 + 2u, c0 + 3u) < vec4(c_len));
        }
        if (k_hi < trips && k_hi >= k_lo) {
            // The row's last vec4, which ends inside it ((base + C) % 4 != 0);
            // k_hi < k_lo only when C < 3 puts both ends in one vec4.
            let c = c0 + 4u * k_hi;
            let g = segment_grad(cache[k_hi], c, t, scale, inv_s, fill, dead);
            store_part4(in_place, u0 + k_hi, g, vec4(c, c + 1u, c + 2u, c + 3u) < vec4(c_len));
        }
    } else {
        for (var k = 0u; k < trips; k++) {
            let c = c0 + 4u * k;
            let g = segment_grad(cache[k], c, t, scale, inv_s, fill, dead);
            store_grad4(base + c, g, c1 - c, in_place);
        }
    }
}

// A whole vec4 of gradient at vec4 index u, over the logits or into grad4.
fn store4(in_place: bool, u: u32, g: vec4<f32>) {
    if (in_place) {
        logits4[u] = g;
    } else {
        grad4[u] = g;
    }
}

// The components of vec4 u that belong to this row (`mine`), one by one:
// the row beside shares the vec4 and writes the others.
fn store_part4(in_place: bool, u: u32, g: vec4<f32>, mine: vec4<bool>) {
    for (var j = 0u; j < 4u; j++) {
        if (mine[j]) {
            if (in_place) {
                logits4[u][j] = g[j];
            } else {
                grad4[u][j] = g[j];
            }
        }
    }
}

// The gradient of four consecutive elements from `index`, of which `left`
// (at least 1) are inside the row, over the logits or into grad. `in_place`
// is a constant of the calling entry point, so no branch survives.
fn store_grad4(index: u32, g: vec4<f32>, left: u32, in_place: bool) {
    if (in_place) {
        logits[index] = g.x;
        if (left > 1u) {
            logits[index + 1u] = g.y;
        }
        if (left > 2u) {
            logits[index + 2u] = g.z;
        }
        if (left > 3u) {
            logits[index + 3u] = g.w;
        }
    } else {
        grad[index] = g.x;
        if (left > 1u) {
            grad[index + 1u] = g.y;
        }
        if (left > 2u) {
            grad[index + 2u] = g.z;
        }
        if (left > 3u) {
            grad[index + 3u] = g.w;
        }
    }
}

// scale * (p_c - q_c) for the four classes from c, from their cached exps.
fn segment_grad(e: vec4<f32>, c: u32, t: Target, scale: f32, inv_s: f32, fill: f32, dead: bool) -> vec4<f32> {
    let q_other = params.smoothing / f32(params.classes);
    let q_true = 1.0 - params.smoothing + q_other;
    let q = select(vec4(q_other), vec4(q_true), vec4(c, c + 1u, c + 2u, c + 3u) == vec4(t.y));
    return select(scale * (e * inv_s - q), vec4(fill), dead);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_LOW, false, VIEW_SCALAR);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_LOW, true, VIEW_SCALAR);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_LOW, false, VIEW_VEC4);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_LOW, true, VIEW_VEC4);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments_t2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_EITHER, false, VIEW_SCALAR);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments_t2_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_EITHER, true, VIEW_SCALAR);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4_t2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_EITHER, false, VIEW_VEC4);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4_t2_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_EITHER, true, VIEW_VEC4);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4s(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_LOW, false, VIEW_SHIFTED);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4s_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_LOW, true, VIEW_SHIFTED);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4s_t2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_EITHER, false, VIEW_SHIFTED);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments4s_t2_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_EITHER, true, VIEW_SHIFTED);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments_wide(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_STORAGE, false, VIEW_SCALAR);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_segments_wide_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    row_segments(wid.x, tid, B_STORAGE, true, VIEW_SCALAR);
}
