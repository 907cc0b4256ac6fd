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
// Three workgroup layouts, picked by the host from C:
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
// Loops run a workgroup-uniform trip count, so every barrier sits in uniform
// control flow (Tint's and naga's uniformity analyses both accept it).
//
// Infinities are never produced on purpose: the running max starts at the
// lowest finite f32, so exp() only ever sees arguments <= 0.

struct Params {
    rows: u32,          // rows in this chunk
    classes: u32,       // C
    ignore_index: i32,
    flags: u32,         // FLAG_* below
    smoothing: f32,     // eps in [0, 1)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const FLAG_WRITE_GRAD: u32 = 1u;        // forward+backward, else forward only
const FLAG_IN_PLACE: u32 = 2u;          // gradient overwrites the logits
const FLAG_UPSTREAM_PER_ROW: u32 = 4u;  // upstream holds g_i per row, else one g

const LOWEST: f32 = -3.4028235e38;
const MAX_WG: u32 = 1024u;
const CACHE4: u32 = 16u;       // vec4s of the row each thread of xent_row_cached holds

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
    let g = select(upstream[0], upstream[row], (params.flags & FLAG_UPSTREAM_PER_ROW) != 0u);
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

// (max, sum of z) across the workgroup in a tree; every thread gets both.
// (A flat fold, one barrier and every thread reading all partials, measured
// 2.7x slower on lavapipe at C = 1000: the reads cost more than the barriers.)
fn reduce_max_zsum(tid: u32, m: f32, z_sum: f32) -> vec2<f32> {
    red_max[tid] = m;
    red_zsum[tid] = z_sum;
    // Barrier: every partial is stored before the tree reads it.
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if (tid < stride) {
            red_max[tid] = max(red_max[tid], red_max[tid + stride]);
            red_zsum[tid] += red_zsum[tid + stride];
        }
        // Barrier: one level's results are complete before the next reads them.
        workgroupBarrier();
    }
    return vec2(red_max[0], red_zsum[0]);
}

fn reduce_sum(tid: u32, s: f32) -> f32 {
    red_sum[tid] = s;
    // Barrier: every partial is stored before the tree reads it.
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if (tid < stride) {
            red_sum[tid] += red_sum[tid + stride];
        }
        // Barrier: one level's sums are complete before the next reads them.
        workgroupBarrier();
    }
    return red_sum[0];
}

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
