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
//                       LSE, and (M, 1/S, p_y - 1) into `work` for the gradient.
//   xent_backward       dl/df from the saved LSE (or, FROM_NORM, from the
//                       split layout's (M, 1/S, p_y - 1)): elementwise, so any C, no
//                       reduction, no barrier. Laid out like xent_rows (TPR
//                       threads per row, VPT values each), over blocks of
//                       TPR * VPT classes, so each thread reads its row's
//                       label, LSE and scale once.
//
// Formats: the logits are f32, f16 or bf16, the gradient is in the logits'
// format or f32; every sum, exp and subtraction is f32 (a half is widened
// on load, the gradient rounded once on store). The two blocks between the
// `>>>` and `<<<` lines below are this file's f32 bindings and accessors;
// for the half formats the loader swaps in those of
// blocks/xent_formats.wgsl (native `f16` where the device has SHADER_F16,
// else two halves packed in a u32). The kernels see only units: LANES
// consecutive elements of the buffer (1 for f32; 2 for the halves, one u32
// word), element e of unit u being e = LANES u + l. A unit is loaded whole
// and its lanes outside the row (or the chunk) are masked.
//
// Who writes a u32 word of a packed gradient: the units of one row are
// dealt out to its threads (and, in xent_backward, to its blocks) one
// thread per unit, so within a dispatch only the threads of the row or
// rows whose elements share the word touch it. A word wholly inside a row
// has one writer, which stores it whole (atomicStore); a word a row shares
// with its neighbour (odd C or odd strides, where a row starts or ends in
// the middle of a word) or with padding is written half by half, each
// writer clearing and setting only its own 16 bits (atomicAnd, atomicOr),
// so no thread of any workgroup ever writes a bit another thread owns.
// Native f16 stores a shared word's half alone (a 16-bit store of one
// component), so it needs no atomics.
//
// Memory traffic per logit element (4-byte formats; the halves move half
// the bytes): xent_rows reads 4 bytes and writes 4
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
    norm_base: u32,     // word offset of the per-row (M, 1/S, p_y - 1) in `work`
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
override FROM_NORM: bool = false; // xent_backward: p from (M, 1/S, p_y - 1) in work, not from LSE
override LABEL_KIND: u32 = 0u;    // 0 i32, 1 u32, 2 i64
override GRAD_IN_LOGITS: bool = false; // in place: the gradient goes through `logits`
// The options, off in the pipelines of a spec without them, so that those
// compile to exactly the code without them; their values come from params.
override SCALED: bool = false;    // a logit scale s != 1
override Z_LOSS: bool = false;    // a z-loss lambda != 0
override PER_CLASS: bool = false; // smoothing weighted per class (PyTorch's convention)
override LANES: u32 = 1u;         // elements per unit: 1 (f32), 2 (halves: a u32 word)

@group(0) @binding(0) var<uniform> params: Params;
// Caller buffers are read_write even where only read: wgpu tracks usage per
// buffer, and engines pool tensors in shared buffers, where a read-only and
// a read-write binding of one buffer would conflict.
// >>> logits: f32 (the loader's swap starts here)
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;

// Unit u of the logits (one f32; .y unused).
fn load_unit(u: u32) -> vec2<f32> {
    return vec2<f32>(logits[u], 0.0);
}

// An in-place gradient's unit u (GRAD_IN_LOGITS).
fn store_unit_in_place(u: u32, g: vec2<f32>, w: vec2<bool>) {
    logits[u] = stored(u, g.x);
}
// <<< logits
@group(0) @binding(2) var<storage, read_write> labels: array<i32>;
// [b_0..b_{C-1}, m_0..m_{C-1}, alpha_0..alpha_{C-1}, W = sum_c alpha_c], the
// op's own buffer
@group(0) @binding(3) var<storage, read> class_vecs: array<f32>;
// The gradient, `stride` apart like the logits. In place (GRAD_IN_LOGITS) it
// is written through `logits` instead, and this binding is a stand-in:
// WebGPU refuses two writable bindings of overlapping ranges. Every element
// is read before its own thread writes it.
// >>> grad: f32 (the loader's swap starts here)
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

// The lanes `w` of the gradient's unit u.
fn store_unit_grad(u: u32, g: vec2<f32>, w: vec2<bool>) {
    for (var l = 0u; l < LANES; l++) {
        if (w[l]) {
            grad[u * LANES + l] = stored(u * LANES + l, g[l]);
        }
    }
}
// <<< grad
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

// The value element e of the gradient gets, before any rounding: the one
// place the tests' fault injection changes.
fn stored(e: u32, g: f32) -> f32 {
    return g;
}

// Lanes `w` of the gradient's unit u.
fn store_unit(u: u32, g: vec2<f32>, w: vec2<bool>) {
    if (GRAD_IN_LOGITS) {
        store_unit_in_place(u, g, w);
    } else {
        store_unit_grad(u, g, w);
    }
}

// The class of lane l of unit u in the row starting at element `base`;
// past any class (wrapping) when the lane lies before the row.
fn class_of(u: u32, l: u32, base: u32) -> u32 {
    return u * LANES + l - base;
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

// Merge two partials (max, sum of exp relative to that max over the
// classes other than the label, sum of z, z_y). The label's own term is
// kept out of the sum so that 1 - p_y = (S - e_y) / S is a sum, not a
// difference: formed as p_y - 1 it cancels (at p_y = 0.999, 1e-4 of
// relative error in f32, all of it once rounded to bf16).
fn merge(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let m = max(a.x, b.x);
    let s = a.y * exp(a.x - m) + b.y * exp(b.x - m);
    return vec4<f32>(m, s, a.z + b.z, a.w + b.w);
}

// S = sum_c exp(z_c - M) of a merged partial: the others' sum plus the
// label's term (none for an ignored or bad row, whose y is C).
fn row_sum(t: Target, total: vec4<f32>) -> f32 {
    return total.y + select(0.0, exp(total.w - total.x), t.y < params.classes);
}

// LSE = M + log S.
fn row_lse(t: Target, total: vec4<f32>) -> f32 {
    return total.x + log(row_sum(t, total));
}

fn row_loss_of(t: Target, total: vec4<f32>) -> f32 {
    let eps = params.smoothing;
    let log_z = row_lse(t, total);
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
// + x.z (eps/C)(W p_c - alpha_c); plus the z-loss's x.y p_c. At the label
// p_y - 1 is `p_y1`, which the fused kernels form as -(S - e_y) / S
// (see merge).
fn grad_at(x: vec3<f32>, p: f32, c: u32, label: Target, q_rest: f32, p_y1: f32) -> f32 {
    let eps = params.smoothing;
    let hit = c == label.y;
    var g: f32;
    if (PER_CLASS) {
        let alpha_c = class_vecs[2u * params.classes + c];
        g = (1.0 - eps) * x.x * select(p, p_y1, hit) + x.z * q_rest * (weight_sum() * p - alpha_c);
    } else {
        // p_y - q_y = (p_y - 1) + eps - eps / C
        g = x.x * select(p - q_rest, p_y1 + (eps - q_rest), hit);
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
        lse[row] = row_lse(t, total);
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

// Thread t's units of a row, counted from the row's first unit: start,
// start + step, ... (VPT of them): contiguous with SEGMENTED, else TPR
// apart.
fn first_unit(t: u32) -> u32 {
    return select(t, t * VPT, SEGMENTED);
}

fn class_step() -> u32 {
    return select(TPR, 1u, SEGMENTED);
}

// One thread's partial over the lanes of units u_first + k * step
// (k < VPT) whose class lies in [lo, hi): (max m, sum of exp(z - m),
// sum of z, z_y), with z[k * LANES + l] left as exp(z - m) (0 for a masked
// lane) for the gradient.
fn thread_partial(
    base: u32,
    label: Target,
    u_first: u32,
    step: u32,
    lo: u32,
    hi: u32,
    z: ptr<function, array<f32, VPT_MAX>>,
) -> vec4<f32> {
    var m = LOWEST;
    var z_sum = 0.0;
    var z_y = 0.0;
    for (var k = 0u; k < VPT; k++) {
        let u = u_first + k * step;
        var f = vec2<f32>(0.0);
        // Either lane in [lo, hi) (a lane before the row wraps past it).
        if (class_of(u, 0u, base) - lo < hi - lo || class_of(u, LANES - 1u, base) - lo < hi - lo) {
            f = load_unit(u);
        }
        for (var l = 0u; l < LANES; l++) {
            let c = class_of(u, l, base);
            var v = LOWEST;
            if (c >= lo && c < hi) {
                v = f[l] + class_vecs[c] - select(0.0, label.margin, c == label.y);
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
            (*z)[k * LANES + l] = v;
            m = max(m, v);
        }
    }
    // One exp per element serves the sum and the gradient.
    var s = 0.0;
    for (var k = 0u; k < VPT; k++) {
        for (var l = 0u; l < LANES; l++) {
            let c = class_of(u_first + k * step, l, base);
            let e = select(0.0, exp((*z)[k * LANES + l] - m), c >= lo && c < hi);
            (*z)[k * LANES + l] = e;
            s += select(e, 0.0, c == label.y);
        }
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
    let u_first = base / LANES + first_unit(t);
    let step = class_step();
    var total = thread_partial(base, label, u_first, step, 0u, select(0u, c_len, live), &z);
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
        let s_all = row_sum(label, total);
        let to_p = exp(m - total.x) / s_all;
        let p_y1 = -total.y / s_all;
        let scales = grad_scales(row, label, select(0.0, total.x + log(s_all), Z_LOSS));
        let q_rest = params.smoothing / f32(c_len);
        for (var k = 0u; k < VPT; k++) {
            let u = u_first + k * step;
            var g = vec2<f32>(0.0);
            var w = vec2<bool>(false);
            for (var l = 0u; l < LANES; l++) {
                let c = class_of(u, l, base);
                if (c < c_len) {
                    g[l] = grad_at(scales, z[k * LANES + l] * to_p, c, label, q_rest, p_y1);
                    w[l] = true;
                }
            }
            if (any(w)) {
                store_unit(u, g, w);
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
    let partial = thread_partial(base, label, (base + first) / LANES + lid, WG, first, last, &z);
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
    let s_all = row_sum(label, total);
    work[params.norm_base + 3u * row] = total.x;
    work[params.norm_base + 3u * row + 1u] = 1.0 / s_all;
    work[params.norm_base + 3u * row + 2u] = -total.y / s_all;
}

@compute @workgroup_size(WG)
fn xent_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Workgroup (x, y + z * Y) takes block x of TPR * VPT units of the
    // rows (y + z * Y) * WG / TPR ..; TPR threads per row, each reading the
    // row's label, LSE and scale once and then its VPT units.
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
    var norm_p_y1 = 0.0;
    if (FROM_NORM) {
        m = work[params.norm_base + 3u * row];
        inv_s = work[params.norm_base + 3u * row + 1u];
        norm_p_y1 = work[params.norm_base + 3u * row + 2u];
        lse_i = select(m, m - log(inv_s), Z_LOSS);
    } else {
        m = lse[row];
        lse_i = m;
    }
    let scales = grad_scales(row, label, lse_i);
    let q_rest = params.smoothing / f32(c_len);
    let base = row * params.stride;
    let u_first = base / LANES + wid.x * TPR * VPT + first_unit(t);
    for (var k = 0u; k < VPT; k++) {
        let u = u_first + k * class_step();
        if (class_of(u, 0u, base) < c_len || class_of(u, LANES - 1u, base) < c_len) {
            let f = load_unit(u);
            var g = vec2<f32>(0.0);
            var w = vec2<bool>(false);
            for (var l = 0u; l < LANES; l++) {
                let c = class_of(u, l, base);
                if (c < c_len) {
                    var z = f[l] + class_vecs[c] - select(0.0, label.margin, c == label.y);
                    if (SCALED) {
                        z *= params.logit_scale;
                    }
                    // From the caller's LSE, p_y - 1 can only be a
                    // difference; from the split norms it is their third.
                    let p = exp(z - m) * inv_s;
                    g[l] = grad_at(scales, p, c, label, q_rest, select(p - 1.0, norm_p_y1, FROM_NORM));
                    w[l] = true;
                }
            }
            store_unit(u, g, w);
        }
    }
}
