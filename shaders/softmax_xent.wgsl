// softmax_xent.wgsl: the per-class logit-adjusted softmax cross-entropy,
// forward, backward from the saved log-sum-exp, and the two fused
// (docs/MATH.md sections 1-5).
//
// Math, per row i with label y (ignored when y == ignore_index):
//   z_c  = s (f_c + b_c - m_y [c == y])     (logit scale s, 1 by default)
//   LSE  = M + log S,  M = max_c z_c,  S = sum_c exp(z_c - M)
//   l_i  = alpha_y ((1 - eps)(LSE - z_y) + eps (LSE - mean_c z_c))
//          + lambda LSE^2                   (z-loss, lambda = 0 by default)
//   or, PER_CLASS (PyTorch's weighted smoothing), with W = sum_c alpha_c:
//   l_i  = (1 - eps) alpha_y (LSE - z_y) + (eps / C)(W LSE - sum_c alpha_c z_c)
//   dl/df_c = s scale_i (alpha_y (p_c - q_c) + 2 lambda LSE p_c),
//     (PER_CLASS: (1-eps) alpha_y (p_c - [c = y]) + (eps/C)(W p_c - alpha_c)
//     in place of alpha_y (p_c - q_c)),
//   p_c = exp(z_c - M) / S,  q_c = (1 - eps)[c == y] + eps / C,
//   scale_i = g_i / denom
// `denom` (1, #valid rows or the sum of valid alpha_y) is written into
// `work` by loss_reduce.wgsl's normalizer before any gradient is formed;
// g_i is the upstream gradient (1, one scalar, or one per row).
//
// Four kernels, one entry point each, specialised by `override` constants
// that the host's plan sets at pipeline creation:
//   xent_rows           TPR threads per row, WG / TPR rows per workgroup.
//                       Each thread holds VPT values of its row in
//                       registers (VPT a pipeline constant, so the loops
//                       over them unroll and the array never touches
//                       memory): one read of the logits, one write of the
//                       gradient (WRITE_GRAD), the floor for C <= TPR * VPT.
//                       Element k of thread t is class k * TPR + t (adjacent
//                       threads read adjacent words: coalesced on GPUs), or
//                       t * VPT + k with SEGMENTED (a contiguous stretch per
//                       thread, which CPU adapters, whose threads are SIMD
//                       lanes, prefer).
//   xent_split_partial  a row cut into chunks of SPAN classes, a workgroup
//                       per (chunk, row): the chunk's (max, sum of exp,
//                       sum of z, z_y) partial into `work`. For C past what
//                       a row-resident workgroup holds; a few rows of a huge
//                       vocabulary still fill the device.
//   xent_split_combine  a thread per row merges its chunks' partials: loss,
//                       LSE, and (M, 1/S) into `work` for the gradient.
//   xent_backward       dl/df from the saved LSE (or, FROM_NORM, from the
//                       split layout's (M, 1/S)): elementwise, so any C, no
//                       reduction, no barrier. Laid out like xent_rows (TPR
//                       threads per row, VPT values each), over blocks of
//                       TPR * VPT classes, so each thread reads its row's
//                       label, LSE and scale once.
//
// Memory traffic per logit element: xent_rows reads 4 bytes and writes 4
// (forward: reads 4). The split layout reads 8 and writes 4 (its gradient
// pass re-reads the chunk). xent_backward reads 4 and writes 4. Per row:
// the label (4 or 8 bytes), 4 bytes of loss, 4 of LSE, and b, m, alpha of
// the label's class; b is C floats that stay in cache across rows.
//
// Rows start `stride` elements apart (padded rows: stride >= C). Labels are
// i32, u32 or i64 (LABEL_KIND). A label that is neither in [0, C) nor the
// ignore index gives a NaN loss and a NaN gradient row (the normalizer
// counts it), never a read out of range.
//
// Barriers: xent_rows and xent_split_partial meet their threads' partials in
// a workgroup-memory tree, one barrier per level (a level's writes complete
// before the next level reads them) and one before the row totals are read.
// Every loop around a barrier has a trip count fixed per pipeline, so all
// barriers sit in uniform control flow; threads past the last row take part
// with empty partials.
//
// Infinities and NaN are never constants here (Tint folds such constants
// and rejects them): the empty partial's max is the lowest finite f32.

struct Params {
    rows: u32,          // rows bound in this chunk
    classes: u32,       // C
    stride: u32,        // elements between row starts
    flags: u32,         // FLAG_* below
    ignore_lo: i32,     // ignore_index, low and high words (high: i64 labels)
    ignore_hi: i32,
    smoothing: f32,     // eps in [0, 1)
    span: u32,          // xent_split_*: classes per chunk
    chunks: u32,        // xent_split_*: chunks per row
    logit_scale: f32,   // s in z = s (f + b - m [c = y]); 1 leaves z as it was
    split_base: u32,    // word offset of the split partials in `work`
    norm_base: u32,     // word offset of the per-row (M, 1/S) in `work`
    z_loss: f32,        // lambda of the z-loss lambda LSE^2; 0: none
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const FLAG_UPSTREAM_SCALAR: u32 = 1u;   // one g in upstream[0]
const FLAG_UPSTREAM_PER_ROW: u32 = 2u;  // g_i in upstream[i]; neither flag: g = 1
const FLAG_ROW_LOSS: u32 = 4u;          // write l_i
const FLAG_LSE: u32 = 8u;               // write LSE_i

// Word 0 of `work`: denom, from loss_reduce.wgsl's normalizer.
const WORK_DENOM: u32 = 0u;

const LOWEST: f32 = -0x1.fffffep+127f;
const VPT_MAX: u32 = 64u;

override WG: u32 = 64u;           // threads per workgroup
override TPR: u32 = 64u;          // xent_rows: threads per row, a power of two dividing WG
override VPT: u32 = 1u;           // values per thread, at most VPT_MAX
override WRITE_GRAD: bool = true; // xent_rows: fused forward+backward, else forward only
override SEGMENTED: bool = false; // xent_rows: contiguous values per thread
override FROM_NORM: bool = false; // xent_backward: p from (M, 1/S) in work, not from LSE
override LABEL_KIND: u32 = 0u;    // 0 i32, 1 u32, 2 i64
override GRAD_IN_LOGITS: bool = false; // in place: the gradient goes through `logits`
// The options, off in the pipelines of a spec without them, so that those
// compile to exactly the code without them; their values come from params.
override SCALED: bool = false;    // a logit scale s != 1
override Z_LOSS: bool = false;    // a z-loss lambda != 0
override PER_CLASS: bool = false; // smoothing weighted per class (PyTorch's convention)

@group(0) @binding(0) var<uniform> params: Params;
// Caller buffers are read_write even where only read: wgpu tracks usage per
// buffer, and engines pool tensors in shared buffers, where a read-only and
// a read-write binding of one buffer would conflict.
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> labels: array<i32>;
// [b_0..b_{C-1}, m_0..m_{C-1}, alpha_0..alpha_{C-1}, W = sum_c alpha_c], the
// op's own buffer
@group(0) @binding(3) var<storage, read> class_vecs: array<f32>;
// The gradient, `stride` apart like the logits. In place (GRAD_IN_LOGITS) it
// is written through `logits` instead, and this binding is a stand-in:
// WebGPU refuses two writable bindings of overlapping ranges. Every element
// is read before its own thread writes it.
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_loss: array<f32>;
// LSE_i: written by the forward, read by xent_backward.
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
// The op's scratch: denom, then the split partials and per-row norms.
@group(0) @binding(7) var<storage, read_write> work: array<f32>;
@group(0) @binding(8) var<storage, read_write> upstream: array<f32>;

var<workgroup> tree: array<vec4<f32>, WG>;

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u + min(params.rows, 0u));
}

fn store_grad(e: u32, g: f32) {
    if (GRAD_IN_LOGITS) {
        logits[e] = g;
    } else {
        grad[e] = g;
    }
}

// W = sum_c alpha_c, which the host keeps after the class vectors (so it
// changes with them).
fn weight_sum() -> f32 {
    return class_vecs[3u * params.classes];
}

// What a row needs to know about its label.
struct Target {
    y: u32,
    margin: f32,   // m_y
    alpha: f32,    // alpha_y
    ignored: bool,
    bad: bool,     // neither in [0, C) nor ignored: NaN row, counted by the normalizer
}


fn target_of(row: u32) -> Target {
    let c = params.classes;
    var t: Target;
    var lo: i32;
    var in_range: bool;
    if (LABEL_KIND == 2u) {
        lo = labels[2u * row];
        let hi = labels[2u * row + 1u];
        t.ignored = lo == params.ignore_lo && hi == params.ignore_hi;
        in_range = hi == 0 && lo >= 0 && u32(lo) < c;
    } else if (LABEL_KIND == 1u) {
        lo = labels[row];
        t.ignored = lo == params.ignore_lo && params.ignore_hi == 0 && params.ignore_lo >= 0;
        in_range = u32(lo) < c;
    } else {
        lo = labels[row];
        t.ignored = lo == params.ignore_lo && params.ignore_hi == (lo >> 31u);
        in_range = lo >= 0 && u32(lo) < c;
    }
    t.bad = !t.ignored && !in_range;
    // Ignored or out of range: no class is the label (y = C), so no margin,
    // and the row's LSE is that of f + b.
    let valid = in_range && !t.ignored;
    t.y = select(c, u32(lo), valid);
    let y = min(t.y, c - 1u);
    t.margin = select(0.0, class_vecs[c + y], valid);
    t.alpha = class_vecs[2u * c + y];
    return t;
}

// Merge two partials (max, sum of exp relative to that max, sum of z, z_y).
fn merge(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let m = max(a.x, b.x);
    let s = a.y * exp(a.x - m) + b.y * exp(b.x - m);
    return vec4<f32>(m, s, a.z + b.z, a.w + b.w);
}

fn row_loss_of(t: Target, total: vec4<f32>) -> f32 {
    let eps = params.smoothing;
    let log_z = total.x + log(total.y);
    let mean_z = total.z / f32(params.classes);
    var l: f32;
    if (PER_CLASS) {
        // (1-eps) alpha_y (LSE - z_y) + (eps/C)(W LSE - sum_c alpha_c z_c)
        let c = f32(params.classes);
        l = (1.0 - eps) * t.alpha * (log_z - total.w) + eps / c * (weight_sum() * log_z - total.z);
    } else {
        l = t.alpha * ((1.0 - eps) * (log_z - total.w) + eps * (log_z - mean_z));
    }
    if (Z_LOSS) {
        l += params.z_loss * log_z * log_z;
    }
    return select(select(l, 0.0, t.ignored), nan(), t.bad);
}

// The gradient dl/df_c = s g/denom (alpha_y (p_c - q_c) + 2 lambda LSE_i p_c)
// as `x.x (p_c - q_c) + x.y p_c`: x = s g/denom (alpha_y, 2 lambda LSE_i).
// 0 for ignored rows, NaN for bad ones. With s = 1 and lambda = 0 it is
// alpha_y g/denom (p_c - q_c) to the bit.
fn grad_scales(row: u32, t: Target, lse_i: f32) -> vec3<f32> {
    let denom = work[WORK_DENOM];
    var g = 1.0;
    if ((params.flags & FLAG_UPSTREAM_SCALAR) != 0u) {
        g = upstream[0];
    } else if ((params.flags & FLAG_UPSTREAM_PER_ROW) != 0u) {
        g = upstream[row];
    }
    let off = t.ignored || denom == 0.0;
    var x = vec3<f32>(select(t.alpha * g / denom, 0.0, off), 0.0, 0.0);
    if (Z_LOSS) {
        x.y = select(2.0 * params.z_loss * lse_i * g / denom, 0.0, off);
    }
    if (PER_CLASS) {
        x.z = select(g / denom, 0.0, off);
    }
    if (SCALED) {
        x *= params.logit_scale;
    }
    return select(x, vec3<f32>(nan()), t.bad);
}

// dl/df_c from p_c and the row's scales x (grad_scales): x.x (p_c - q_c),
// or with PER_CLASS smoothing (1-eps) x.x (p_c - [c = y])
// + x.z (eps/C)(W p_c - alpha_c); plus the z-loss's x.y p_c.
fn grad_at(x: vec3<f32>, p: f32, c: u32, label: Target, q_rest: f32) -> f32 {
    let eps = params.smoothing;
    var g: f32;
    if (PER_CLASS) {
        let alpha_c = class_vecs[2u * params.classes + c];
        let hit = select(0.0, 1.0, c == label.y);
        g = (1.0 - eps) * x.x * (p - hit) + x.z * q_rest * (weight_sum() * p - alpha_c);
    } else {
        let q = q_rest + select(0.0, 1.0 - eps, c == label.y);
        g = x.x * (p - q);
    }
    if (Z_LOSS) {
        g += x.y * p;
    }
    return g;
}

fn write_row(row: u32, t: Target, total: vec4<f32>) {
    if ((params.flags & FLAG_ROW_LOSS) != 0u) {
        row_loss[row] = row_loss_of(t, total);
    }
    if ((params.flags & FLAG_LSE) != 0u) {
        lse[row] = total.x + log(total.y);
    }
}

// Tree over groups of `width` adjacent threads (a power of two): afterwards
// tree[first thread of the group] holds the group's merged partial.
fn tree_merge(lid: u32, width: u32, mine: vec4<f32>) {
    tree[lid] = mine;
    for (var half = width / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if ((lid % width) < half) {
            tree[lid] = merge(tree[lid], tree[lid + half]);
        }
    }
    workgroupBarrier();
}

// Row blocks run along y, folded into z past 65,535 workgroups.
fn row_block(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y + wid.z * nwg.y;
}

// Thread t's values of a row: classes start, start + step, ... (VPT of
// them): contiguous with SEGMENTED, else TPR apart.
fn first_class(t: u32) -> u32 {
    return select(t, t * VPT, SEGMENTED);
}

fn class_step() -> u32 {
    return select(TPR, 1u, SEGMENTED);
}

// One thread's partial over classes start + k * step below `limit`:
// (max m, sum of exp(z - m), sum of z, z_y), with z[k] left as
// exp(z_k - m) (0 past the limit) for the gradient.
fn thread_partial(
    base: u32,
    label: Target,
    start: u32,
    step: u32,
    limit: u32,
    z: ptr<function, array<f32, VPT_MAX>>,
) -> vec4<f32> {
    var m = LOWEST;
    var z_sum = 0.0;
    var z_y = 0.0;
    for (var k = 0u; k < VPT; k++) {
        let c = start + k * step;
        var v = LOWEST;
        if (c < limit) {
            v = logits[base + c] + class_vecs[c] - select(0.0, label.margin, c == label.y);
            if (SCALED) {
                v *= params.logit_scale;
            }
            if (PER_CLASS) {
                z_sum += class_vecs[2u * params.classes + c] * v; // sum_c alpha_c z_c
            } else {
                z_sum += v;
            }
            z_y += select(0.0, v, c == label.y);
        }
        (*z)[k] = v;
        m = max(m, v);
    }
    // One exp per element serves the sum and the gradient.
    var s = 0.0;
    for (var k = 0u; k < VPT; k++) {
        let e = select(0.0, exp((*z)[k] - m), start + k * step < limit);
        (*z)[k] = e;
        s += e;
    }
    return vec4<f32>(m, s, z_sum, z_y);
}

@compute @workgroup_size(WG)
fn xent_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c_len = params.classes;
    let row = row_block(wid, nwg) * (WG / TPR) + lid / TPR;
    let t = lid % TPR;
    let live = row < params.rows;
    let label = target_of(select(0u, row, live));
    let base = row * params.stride;

    // The thread's values of z, then its partial.
    var z: array<f32, VPT_MAX>;
    let start = first_class(t);
    let step = class_step();
    var total = thread_partial(base, label, start, step, select(0u, c_len, live), &z);
    let m = total.x;
    if (TPR > 1u) {
        tree_merge(lid, TPR, total);
        total = tree[lid - t];
    }
    if (!live) {
        return;
    }
    if (t == 0u) {
        write_row(row, label, total);
    }
    if (WRITE_GRAD) {
        // p_c = exp(z_c - m) exp(m - M) / S.
        let to_p = exp(m - total.x) / total.y;
        let scales = grad_scales(row, label, select(0.0, total.x + log(total.y), Z_LOSS));
        let q_rest = params.smoothing / f32(c_len);
        for (var k = 0u; k < VPT; k++) {
            let c = start + k * step;
            if (c < c_len) {
                store_grad(base + c, grad_at(scales, z[k] * to_p, c, label, q_rest));
            }
        }
    }
}

@compute @workgroup_size(WG)
fn xent_split_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // x: the chunk of the row, y: the row (the host keeps rows <= 65,535 per chunk).
    let chunk = wid.x;
    let row = wid.y;
    let label = target_of(row);
    let base = row * params.stride;
    let first = chunk * params.span;
    let last = min(first + params.span, params.classes);

    var z: array<f32, VPT_MAX>;
    let partial = thread_partial(base, label, first + lid, WG, last, &z);
    tree_merge(lid, WG, partial);
    if (lid == 0u) {
        let at = params.split_base + 4u * (row * params.chunks + chunk);
        let p = tree[0];
        work[at] = p.x;
        work[at + 1u] = p.y;
        work[at + 2u] = p.z;
        work[at + 3u] = p.w;
    }
}

@compute @workgroup_size(WG)
fn xent_split_combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= params.rows) {
        return;
    }
    let label = target_of(row);
    var total = vec4<f32>(LOWEST, 0.0, 0.0, 0.0);
    for (var k = 0u; k < params.chunks; k++) {
        let at = params.split_base + 4u * (row * params.chunks + k);
        total = merge(total, vec4<f32>(work[at], work[at + 1u], work[at + 2u], work[at + 3u]));
    }
    write_row(row, label, total);
    work[params.norm_base + 2u * row] = total.x;
    work[params.norm_base + 2u * row + 1u] = 1.0 / total.y;
}

@compute @workgroup_size(WG)
fn xent_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Workgroup (x, y + z * Y) takes block x of TPR * VPT classes of the
    // rows (y + z * Y) * WG / TPR ..; TPR threads per row, each reading the
    // row's label, LSE and scale once and then its VPT elements.
    let row = row_block(wid, nwg) * (WG / TPR) + lid / TPR;
    if (row >= params.rows) {
        return;
    }
    let t = lid % TPR;
    let c_len = params.classes;
    let label = target_of(row);
    var m: f32;
    var inv_s = 1.0;
    var lse_i: f32;
    if (FROM_NORM) {
        m = work[params.norm_base + 2u * row];
        inv_s = work[params.norm_base + 2u * row + 1u];
        lse_i = select(m, m - log(inv_s), Z_LOSS);
    } else {
        m = lse[row];
        lse_i = m;
    }
    let scales = grad_scales(row, label, lse_i);
    let q_rest = params.smoothing / f32(c_len);
    let base = row * params.stride;
    let first = wid.x * TPR * VPT;
    for (var k = 0u; k < VPT; k++) {
        let c = first + first_class(t) + k * class_step();
        if (c < c_len) {
            var z = logits[base + c] + class_vecs[c] - select(0.0, label.margin, c == label.y);
            if (SCALED) {
                z *= params.logit_scale;
            }
            store_grad(base + c, grad_at(scales, exp(z - m) * inv_s, c, label, q_rest));
        }
    }
}
